//! A child process measured by the kernel: wall time, peak RSS, CPU seconds.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// What one child run cost.
#[derive(Debug)]
pub struct Measured {
    /// From spawn to exit.
    pub wall: Duration,
    /// Peak resident set size in KiB (`ru_maxrss`).
    pub peak_rss_kib: u64,
    /// User CPU time.
    pub user: Duration,
    /// System CPU time.
    pub system: Duration,
    /// What the child printed on standard output.
    pub stdout: Vec<u8>,
}

impl Measured {
    /// Peak RSS in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// Runs `command` to its end; its standard output is captured, standard error passed through.
pub fn run_measured(command: &mut Command) -> Result<Measured> {
    let started = Instant::now();
    let mut child = command.stdout(Stdio::piped()).spawn()?;
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_end(&mut out, &mut stdout)?;
    }
    let (status, usage) = wait4(child.id())?;
    let wall = started.elapsed();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed (wait status {status})");
    }
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Measured {
        wall,
        peak_rss_kib: usage.ru_maxrss as u64,
        user: time(usage.ru_utime),
        system: time(usage.ru_stime),
        stdout,
    })
}

/// Waits for `pid` and returns its wait status and resource usage.
#[allow(unsafe_code)] // libc::wait4; see the SAFETY notes.
fn wait4(pid: u32) -> Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child, not yet reaped; both pointers are valid for the call.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            return Ok((status, usage));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    }
}
