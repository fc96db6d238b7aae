//! What a run counts: records in and out of each stage, and where rejected
//! ones went. Partitions count, the summary adds them up, the metrics and
//! the status page report them.

use std::collections::BTreeMap;

use serde::Serialize;
use tributary_stages::Route;

/// Records through one stage.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StageCounts {
    /// Records that entered the stage.
    pub records_in: u64,
    /// Records that went on.
    pub records_out: u64,
    /// Records the stage sent to the DLQ.
    pub dlq: u64,
    /// Records the stage sent to review.
    pub review: u64,
}

/// Counters of one partition, or of the whole run.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Records read.
    pub records_in: u64,
    /// Payload bytes read.
    pub bytes_in: u64,
    /// Records written to the outputs.
    pub records_out: u64,
    /// Records sent to the DLQ.
    pub dlq: u64,
    /// Records sent to review.
    pub review: u64,
    /// Per stage, in pipeline order (validate first).
    pub stages: Vec<StageCounts>,
    /// DLQ records by `stage/rule`.
    pub dlq_by_rule: BTreeMap<String, u64>,
    /// Review records by `stage/rule`.
    pub review_by_rule: BTreeMap<String, u64>,
}

impl Counts {
    pub(crate) fn new(stages: usize) -> Self {
        Counts {
            stages: vec![StageCounts::default(); stages],
            ..Counts::default()
        }
    }

    /// Counts one record that stage `stage_index` (`stage`) sent through `route` by `rule`.
    pub(crate) fn count_reject(
        &mut self,
        stage_index: usize,
        stage: &str,
        rule: &str,
        route: Route,
    ) {
        let (total, at_stage, by_rule) = match route {
            Route::Dlq => (
                &mut self.dlq,
                &mut self.stages[stage_index].dlq,
                &mut self.dlq_by_rule,
            ),
            Route::Review => (
                &mut self.review,
                &mut self.stages[stage_index].review,
                &mut self.review_by_rule,
            ),
        };
        *total += 1;
        *at_stage += 1;
        *by_rule.entry(format!("{stage}/{rule}")).or_default() += 1;
    }

    /// Adds `other` in (a partition's counts into the run's).
    pub(crate) fn add(&mut self, other: &Counts) {
        self.records_in += other.records_in;
        self.bytes_in += other.bytes_in;
        self.records_out += other.records_out;
        self.dlq += other.dlq;
        self.review += other.review;
        if self.stages.len() < other.stages.len() {
            self.stages
                .resize(other.stages.len(), StageCounts::default());
        }
        for (a, b) in self.stages.iter_mut().zip(&other.stages) {
            a.records_in += b.records_in;
            a.records_out += b.records_out;
            a.dlq += b.dlq;
            a.review += b.review;
        }
        for (k, v) in &other.dlq_by_rule {
            *self.dlq_by_rule.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.review_by_rule {
            *self.review_by_rule.entry(k.clone()).or_default() += v;
        }
    }

    /// Whether every record read left through exactly one door.
    pub fn balanced(&self) -> bool {
        self.records_in == self.records_out + self.dlq + self.review
    }
}
