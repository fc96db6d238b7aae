//! Crash and pause points for the exactly-once tests.
//!
//! `TRIBUTARY_CRASH_AT=<point>[:<n>]` kills the process (no cleanup, like
//! `kill -9`) the n-th time (default: first) execution reaches `<point>`.
//! `TRIBUTARY_PAUSE_AT=<point>[:<n>]` freezes it there instead (it stops
//! itself with `SIGSTOP`, as a pod paused by the kernel would be) until a
//! `SIGCONT`, so a test can let the group move on and then thaw a zombie.
//! `TRIBUTARY_FAIL_AT=<point>[:<n>]` makes [`fail_point`] say yes once, so
//! the caller fails there as if the store had refused.
//! Unset, a point costs one relaxed atomic load. The points are named where
//! they are placed; ARCHITECTURE.md lists them with the failure each one
//! reproduces.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    point: String,
    nth: u64,
    hits: AtomicU64,
}

impl Armed {
    fn from_env(var: &str) -> Option<Armed> {
        let spec = std::env::var(var).ok()?;
        let (point, nth) = match spec.split_once(':') {
            Some((p, n)) => (p.to_string(), n.parse().ok()?),
            None => (spec, 1),
        };
        Some(Armed {
            point,
            nth,
            hits: AtomicU64::new(0),
        })
    }

    fn reached(armed: &OnceLock<Option<Armed>>, var: &str, point: &str) -> bool {
        armed
            .get_or_init(|| Armed::from_env(var))
            .as_ref()
            .is_some_and(|a| {
                a.point == point && a.hits.fetch_add(1, Ordering::Relaxed) + 1 == a.nth
            })
    }
}

/// Kills the process here if `TRIBUTARY_CRASH_AT` names this point and its
/// count is reached; freezes it here if `TRIBUTARY_PAUSE_AT` does.
pub fn crash_point(point: &str) {
    static CRASH: OnceLock<Option<Armed>> = OnceLock::new();
    static PAUSE: OnceLock<Option<Armed>> = OnceLock::new();
    if Armed::reached(&CRASH, "TRIBUTARY_CRASH_AT", point) {
        eprintln!("crash point {point} reached: aborting");
        std::process::abort();
    }
    if Armed::reached(&PAUSE, "TRIBUTARY_PAUSE_AT", point) {
        eprintln!("pause point {point} reached: stopping until SIGCONT");
        // SAFETY: raise has no memory-safety preconditions; SIGSTOP stops the
        // whole process, which resumes here on SIGCONT.
        #[allow(unsafe_code)]
        unsafe {
            libc::raise(libc::SIGSTOP);
        }
        eprintln!("pause point {point}: resumed");
    }
}

/// Whether `TRIBUTARY_FAIL_AT` names this point and its count is reached:
/// the caller then fails as its I/O would.
pub fn fail_point(point: &str) -> bool {
    static FAIL: OnceLock<Option<Armed>> = OnceLock::new();
    let fail = Armed::reached(&FAIL, "TRIBUTARY_FAIL_AT", point);
    if fail {
        eprintln!("fail point {point} reached: failing");
    }
    fail
}
