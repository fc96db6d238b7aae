//! Private PostgreSQL servers for tests that stop, pause or kill them: a
//! primary made with `initdb` in a temporary directory and, from a
//! `pg_basebackup` of it, a streaming replica, each on a free port, run
//! with the machine's PostgreSQL 15 server binaries (where `pg_config
//! --bindir` says) as the `postgres` user when the tests run as root (the
//! server refuses root).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::free_port;

fn bindir() -> PathBuf {
    let output = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("pg_config (PostgreSQL's server package) is on the PATH");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a server binary, as `postgres` when we are root.
fn try_run(program: &str, args: &[&str]) -> std::io::Result<Output> {
    let binary = bindir().join(program);
    if as_root() {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&binary)
            .args(args)
            .output()
    } else {
        Command::new(&binary).args(args).output()
    }
}

/// [`try_run`], which must succeed.
fn run(program: &str, args: &[&str]) -> Output {
    let output = try_run(program, args).unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// One server: its data directory and port.
#[derive(Debug)]
pub struct Server {
    data: PathBuf,
    /// Where it listens (127.0.0.1).
    pub port: u16,
    running: bool,
}

impl Server {
    fn path(&self) -> &str {
        self.data.to_str().expect("a UTF-8 temporary path")
    }

    /// Starts it (waiting until it accepts connections).
    pub fn start(&mut self) {
        let log = self.data.with_extension("log");
        let options = format!("-p {} -c listen_addresses=127.0.0.1", self.port);
        run(
            "pg_ctl",
            &[
                "-D",
                self.path(),
                "-l",
                log.to_str().expect("a UTF-8 path"),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        self.running = true;
    }

    /// Stops it: `fast` (clients disconnected, a clean shutdown) or
    /// `immediate` (like a crash).
    pub fn stop(&mut self, mode: &str) {
        run("pg_ctl", &["-D", self.path(), "-m", mode, "-w", "stop"]);
        self.running = false;
    }

    /// A connection URL for `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// What its log says so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running {
            let _ = try_run(
                "pg_ctl",
                &["-D", self.path(), "-m", "immediate", "-w", "stop"],
            );
        }
    }
}

/// A primary and, if asked, a streaming replica of it, in one temporary
/// directory removed when dropped.
#[derive(Debug)]
pub struct Cluster {
    /// The primary.
    pub primary: Server,
    /// The replica.
    pub replica: Option<Server>,
    // Dropped last: the servers stop before their directory goes.
    _dir: tempfile::TempDir,
}

/// Starts a private primary and, with `replica`, a streaming replica that
/// is caught up when this returns.
pub fn cluster(replica: bool) -> Cluster {
    let dir = tempfile::Builder::new()
        .prefix("tributary-pg-")
        .tempdir()
        .expect("a temporary directory");
    if as_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown of the PostgreSQL directory failed");
    }
    let data = dir.path().join("primary");
    let data_text = data.to_str().expect("a UTF-8 path");
    run(
        "initdb",
        &[
            "-D",
            data_text,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
    );
    append(
        &data.join("pg_hba.conf"),
        "host replication all 127.0.0.1/32 trust\n",
    );
    let sockets = dir.path().to_str().expect("a UTF-8 path");
    append(
        &data.join("postgresql.conf"),
        &format!(
            "unix_socket_directories = '{sockets}'\nmax_connections = 300\nfsync = off\n\
             synchronous_commit = on\nfull_page_writes = off\nshared_buffers = 64MB\n\
             wal_level = replica\nmax_wal_senders = 5\nhot_standby = on\n\
             hot_standby_feedback = on\nwal_receiver_status_interval = 1s\n"
        ),
    );
    let mut primary = Server {
        data,
        port: free_port(),
        running: false,
    };
    primary.start();
    let replica = replica.then(|| {
        let data = dir.path().join("replica");
        let port = primary.port.to_string();
        run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                data.to_str().expect("a UTF-8 path"),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        let mut replica = Server {
            data,
            port: free_port(),
            running: false,
        };
        replica.start();
        replica
    });
    Cluster {
        primary,
        replica,
        _dir: dir,
    }
}

fn append(file: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .unwrap_or_else(|e| panic!("opening {}: {e}", file.display()));
    f.write_all(text.as_bytes())
        .expect("appending to the configuration");
}
