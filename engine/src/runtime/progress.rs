//! Progress of a bounded run: records, bytes, rate and ETA, drawn on a
//! terminal (stderr) and never when output is piped.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Counters the partitions add to.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) records: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

/// Draws `progress` against `total_bytes` until dropped.
pub(crate) struct ProgressDisplay {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

impl ProgressDisplay {
    /// Starts drawing when stderr is a terminal.
    pub(crate) fn start(progress: Arc<Progress>, total_bytes: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            return ProgressDisplay {
                task: None,
                bar: None,
            };
        }
        let bar = ProgressBar::new(total_bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} · {msg} · ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let shown = bar.clone();
        let started = std::time::Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let records = progress.records.load(Ordering::Relaxed);
                shown.set_position(progress.bytes.load(Ordering::Relaxed));
                let rate = records as f64 / started.elapsed().as_secs_f64().max(0.001);
                shown.set_message(format!("{records} records ({rate:.0}/s)"));
            }
        });
        ProgressDisplay {
            task: Some(task),
            bar: Some(bar),
        }
    }
}

impl Drop for ProgressDisplay {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
