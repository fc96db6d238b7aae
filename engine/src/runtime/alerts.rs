//! The error-rate alert: the share of records sent to the DLQ or review over
//! a sliding window, checked every second. Crossing the threshold logs an
//! ERROR, sets the `firing` gauge and POSTs a JSON alert to the webhook
//! (retried with backoff); falling back under it announces the recovery the
//! same way.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tributary_connectors::retry::{Exhausted, RetryPolicy};
use tributary_connectors::store::Storage;

use crate::plan::ErrorRateAlert;
use crate::telemetry::WatchedAlert;

/// Per-second buckets of (records in, records rejected).
#[derive(Debug)]
struct Window {
    buckets: Vec<(u64, u64)>,
    /// Second (since `start`) of `buckets[0]`'s slot, for expiring old ones.
    stamps: Vec<u64>,
    start: Instant,
}

impl Window {
    fn new(seconds: usize) -> Self {
        Window {
            buckets: vec![(0, 0); seconds.max(1)],
            stamps: vec![u64::MAX; seconds.max(1)],
            start: Instant::now(),
        }
    }

    fn slot(&mut self) -> &mut (u64, u64) {
        let second = self.start.elapsed().as_secs();
        let i = (second % self.buckets.len() as u64) as usize;
        if self.stamps[i] != second {
            self.stamps[i] = second;
            self.buckets[i] = (0, 0);
        }
        &mut self.buckets[i]
    }

    fn totals(&self) -> (u64, u64) {
        let now = self.start.elapsed().as_secs();
        let len = self.buckets.len() as u64;
        self.buckets
            .iter()
            .zip(&self.stamps)
            .filter(|(_, s)| **s != u64::MAX && now.saturating_sub(**s) < len)
            .fold((0, 0), |(a, b), ((i, r), _)| (a + i, b + r))
    }
}

/// The alert's live state, shared by partitions (which record) and the checker.
#[derive(Debug)]
pub(crate) struct ErrorRate {
    settings: ErrorRateAlert,
    pipeline: String,
    window: Mutex<Window>,
    firing: AtomicBool,
    /// Current rate in parts per million (the metric).
    rate_ppm: AtomicU64,
}

impl ErrorRate {
    pub(crate) fn new(pipeline: &str, settings: ErrorRateAlert) -> Arc<Self> {
        let seconds = settings.window.as_secs().max(1) as usize;
        Arc::new(ErrorRate {
            settings,
            pipeline: pipeline.to_string(),
            window: Mutex::new(Window::new(seconds)),
            firing: AtomicBool::new(false),
            rate_ppm: AtomicU64::new(0),
        })
    }

    /// Adds a batch's input and rejects.
    pub(crate) fn record(&self, records: u64, rejected: u64) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let slot = window.slot();
        slot.0 += records;
        slot.1 += rejected;
    }

    /// Checks the window; returns the alert to send when the state changed.
    fn check(&self) -> Option<serde_json::Value> {
        let (records, rejected) = self
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .totals();
        let rate = rejected as f64 / records.max(1) as f64;
        self.rate_ppm
            .store((rate * 1_000_000.0) as u64, Ordering::Relaxed);
        let over = records >= self.settings.min_records && rate > self.settings.threshold;
        let under = rate <= self.settings.threshold
            && (records >= self.settings.min_records || rejected == 0);
        let firing = self.is_firing();
        let status = if !firing && over {
            "firing"
        } else if firing && under {
            "resolved"
        } else {
            return None;
        };
        self.firing.store(status == "firing", Ordering::Relaxed);
        let fields = (
            rate * 100.0,
            self.settings.threshold * 100.0,
            records,
            rejected,
        );
        if status == "firing" {
            tracing::error!(pipeline = %self.pipeline, rate_pct = fields.0, threshold_pct = fields.1, records, rejected, window_s = self.settings.window.as_secs(), "error rate above threshold");
        } else {
            tracing::info!(pipeline = %self.pipeline, rate_pct = fields.0, threshold_pct = fields.1, records, rejected, "error rate back under threshold");
        }
        Some(json!({
            "alert": "error_rate",
            "status": status,
            "pipeline": self.pipeline,
            "rate": rate,
            "threshold": self.settings.threshold,
            "window_seconds": self.settings.window.as_secs(),
            "records": records,
            "rejected": rejected,
            "at": chrono::Utc::now().to_rfc3339(),
        }))
    }
}

impl WatchedAlert for ErrorRate {
    fn window(&self) -> Duration {
        self.settings.window
    }

    fn rate(&self) -> f64 {
        self.rate_ppm.load(Ordering::Relaxed) as f64 / 1_000_000.0
    }

    fn is_firing(&self) -> bool {
        self.firing.load(Ordering::Relaxed)
    }
}

/// Checks `alert` every second and delivers state changes to its webhook, until aborted.
pub(crate) fn spawn_checker(
    alert: Arc<ErrorRate>,
    storage: &Storage,
) -> tokio::task::JoinHandle<()> {
    let (retry, targets) = (storage.retry, storage.targets.clone());
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .ok();
        let retrier = alert.settings.webhook.as_ref().map(|url| {
            targets.retrier(
                format!("alert webhook {url}"),
                RetryPolicy {
                    exhausted: Exhausted::Fail,
                    ..retry
                },
            )
        });
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(body) = alert.check() else { continue };
            let (Some(url), Some(http), Some(retrier)) = (
                alert.settings.webhook.clone(),
                http.clone(),
                retrier.clone(),
            ) else {
                continue;
            };
            // Delivery runs beside the checker so a slow webhook never delays the next check.
            tokio::spawn(async move {
                let sent = retrier
                    .run(
                        "post alert",
                        || {
                            let (http, url, body) = (http.clone(), url.clone(), body.clone());
                            async move {
                                // A webhook's path is often its secret (Slack,
                                // Teams): errors, logged by the retrier, leave it out.
                                let response = http
                                    .post(&url)
                                    .json(&body)
                                    .send()
                                    .await
                                    .map_err(reqwest::Error::without_url)?;
                                response
                                    .error_for_status()
                                    .map(|_| ())
                                    .map_err(reqwest::Error::without_url)
                            }
                        },
                        |e: &reqwest::Error| {
                            e.status()
                                .is_none_or(|s| s.is_server_error() || s.as_u16() == 429)
                        },
                    )
                    .await;
                if let Err(error) = sent {
                    let webhook = tributary_connectors::secret::url_origin(&url);
                    tracing::error!(%webhook, %error, "could not deliver the alert");
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Arc<ErrorRate> {
        ErrorRate::new(
            "orders",
            ErrorRateAlert {
                threshold: 0.05,
                window: Duration::from_secs(60),
                min_records: 100,
                webhook: None,
            },
        )
    }

    #[test]
    fn fires_above_the_threshold_once_and_resolves_under_it() {
        let a = alert();
        a.record(50, 10);
        assert!(a.check().is_none(), "too few records to judge");
        a.record(950, 90);
        let fired = a.check().unwrap();
        assert_eq!(fired["status"], "firing");
        assert!(a.is_firing());
        assert!(a.check().is_none(), "fires once");
        a.record(100_000, 0);
        let resolved = a.check().unwrap();
        assert_eq!(resolved["status"], "resolved");
        assert!(!a.is_firing());
    }
}
