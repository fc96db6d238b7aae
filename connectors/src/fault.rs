//! Crash points for the exactly-once tests.
//!
//! `TRIBUTARY_CRASH_AT=<point>[:<n>]` kills the process (no cleanup, like
//! `kill -9`) the n-th time (default: first) execution reaches `<point>`.
//! Unset, a crash point costs one relaxed atomic load. The points are named
//! where they are placed; ARCHITECTURE.md lists them with the failure each
//! one reproduces.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    point: String,
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("TRIBUTARY_CRASH_AT").ok()?;
            let (point, nth) = match spec.split_once(':') {
                Some((p, n)) => (p.to_string(), n.parse().ok()?),
                None => (spec, 1),
            };
            Some(Armed {
                point,
                nth,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Kills the process here if `TRIBUTARY_CRASH_AT` names this point and its count is reached.
pub fn crash_point(point: &str) {
    let Some(armed) = armed() else {
        return;
    };
    if armed.point == point && armed.hits.fetch_add(1, Ordering::Relaxed) + 1 == armed.nth {
        eprintln!("crash point {point} reached: aborting");
        std::process::abort();
    }
}
