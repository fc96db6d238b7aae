//! The status page at `/`: per partition throughput over the last minutes,
//! lag and pauses, dead letters by stage, rule and door, and targets that
//! are failing past their retry budget — for people who do not want to read
//! Prometheus. `/status.json` is the same data for scripts; the page embeds
//! it at first paint and polls it every few seconds.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Metrics, Readiness};

/// How often the throughput history is sampled.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: ten minutes.
const SAMPLES: usize = 121;

/// Records-in totals per partition, sampled on an interval.
#[derive(Debug, Default)]
pub(super) struct History(Mutex<VecDeque<(u64, BTreeMap<String, u64>)>>);

impl History {
    /// Takes a sample of `metrics` now.
    pub(super) fn sample(&self, metrics: &Metrics) {
        let totals: BTreeMap<String, u64> = match metrics.board.lock() {
            Ok(board) => board
                .partitions
                .iter()
                .map(|(p, t)| (p.clone(), t[0]))
                .collect(),
            Err(_) => return,
        };
        if let Ok(mut samples) = self.0.lock() {
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            samples.push_back((now_ms(), totals));
        }
    }

    /// Records per second between consecutive samples, per partition.
    fn rates(&self) -> Throughput {
        let Ok(samples) = self.0.lock() else {
            return Throughput::default();
        };
        let mut out = Throughput::default();
        let partitions: std::collections::BTreeSet<&String> =
            samples.iter().flat_map(|(_, t)| t.keys()).collect();
        for pair in samples.iter().collect::<Vec<_>>().windows(2) {
            let ((t0, before), (t1, after)) = (pair[0], pair[1]);
            let seconds = (t1.saturating_sub(*t0)) as f64 / 1000.0;
            out.times.push(*t1);
            for p in &partitions {
                let then = before.get(*p).copied().unwrap_or(0);
                let now = after.get(*p).copied().unwrap_or(then);
                out.series
                    .entry((*p).clone())
                    .or_default()
                    .push(now.saturating_sub(then) as f64 / seconds.max(0.001));
            }
        }
        out
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Throughput over time: `series[p][i]` is partition `p`'s records per second up to `times[i]`.
#[derive(Debug, Default, Serialize)]
struct Throughput {
    times: Vec<u64>,
    series: BTreeMap<String, Vec<f64>>,
}

#[derive(Debug, Serialize)]
struct PartitionStatus {
    partition: String,
    records_in: u64,
    records_out: u64,
    dlq: u64,
    review: u64,
    lag: Option<i64>,
    paused: bool,
}

#[derive(Debug, Serialize)]
struct RejectStatus {
    stage: String,
    rule: String,
    door: &'static str,
    records: u64,
}

#[derive(Debug, Serialize)]
struct TargetStatus {
    target: String,
    retries: u64,
    waiting: bool,
}

/// What the page shows.
#[derive(Debug, Serialize)]
pub(super) struct Status {
    pipeline: String,
    ready: bool,
    not_ready: Vec<String>,
    sample_seconds: u64,
    partitions: Vec<PartitionStatus>,
    throughput: Throughput,
    rejects: Vec<RejectStatus>,
    targets: Vec<TargetStatus>,
}

impl Status {
    /// The status now.
    pub(super) fn now(metrics: &Metrics, history: &History) -> Self {
        let consumer = metrics.consumer_view();
        let (pipeline, mut partitions, rejects) = match metrics.board.lock() {
            Ok(board) => (
                board.pipeline.clone(),
                board
                    .partitions
                    .iter()
                    .map(|(p, t)| PartitionStatus {
                        partition: p.clone(),
                        records_in: t[0],
                        records_out: t[1],
                        dlq: t[2],
                        review: t[3],
                        lag: None,
                        paused: false,
                    })
                    .collect::<Vec<_>>(),
                board
                    .rejects
                    .iter()
                    .map(|((stage, rule, door), n)| RejectStatus {
                        stage: stage.clone(),
                        rule: rule.clone(),
                        door,
                        records: *n,
                    })
                    .collect::<Vec<_>>(),
            ),
            Err(_) => (String::new(), Vec::new(), Vec::new()),
        };
        for (partition, (lag, paused)) in consumer {
            match partitions.iter_mut().find(|p| p.partition == partition) {
                Some(p) => (p.lag, p.paused) = (lag, paused),
                None => partitions.push(PartitionStatus {
                    partition,
                    records_in: 0,
                    records_out: 0,
                    dlq: 0,
                    review: 0,
                    lag,
                    paused,
                }),
            }
        }
        let mut rejects = rejects;
        rejects.sort_by_key(|r| std::cmp::Reverse(r.records));
        let (ready, not_ready) = match metrics.readiness() {
            Readiness::Ready => (true, Vec::new()),
            Readiness::NotReady(reasons) => (false, reasons),
        };
        Status {
            pipeline,
            ready,
            not_ready,
            sample_seconds: SAMPLE_EVERY.as_secs(),
            partitions,
            throughput: history.rates(),
            rejects,
            targets: metrics
                .retry_targets()
                .by_target()
                .into_iter()
                .map(|(target, (retries, waiting))| TargetStatus {
                    target: target.to_string(),
                    retries,
                    waiting,
                })
                .collect(),
        }
    }

    /// The page with this status embedded, so it shows data at first paint.
    pub(super) fn page(&self) -> String {
        let json = serde_json::to_string(self)
            .unwrap_or_else(|_| "null".into())
            // Keep the JSON from closing the script element it sits in.
            .replace("</", "<\\/");
        PAGE.replace("/*STATUS*/null", &json)
    }
}

const PAGE: &str = include_str!("status.html");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counts::StageCounts;

    #[test]
    fn rates_come_from_consecutive_samples_and_the_page_embeds_them() {
        let metrics = Metrics::default();
        metrics.pipeline("orders");
        let history = History::default();
        history.sample(&metrics);
        let delta = StageCounts {
            records_in: 500,
            records_out: 490,
            dlq: 10,
            review: 0,
        };
        metrics.stage_batch("orders/0", "validate", &delta, Duration::from_millis(1));
        metrics.rejected("validate", "required", "dlq");
        std::thread::sleep(Duration::from_millis(20));
        history.sample(&metrics);
        let status = Status::now(&metrics, &history);
        let rates = &status.throughput.series["orders/0"];
        assert_eq!(rates.len(), 1);
        assert!(rates[0] > 500.0, "{rates:?}");
        assert_eq!(status.rejects[0].rule, "required");
        assert_eq!(status.partitions[0].dlq, 10);
        let page = status.page();
        assert!(page.contains("\"pipeline\":\"orders\""));
        assert!(!page.contains("/*STATUS*/null"));
    }
}
