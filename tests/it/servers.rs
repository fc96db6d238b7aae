//! The servers the Kafka tests run against: a real `tansu` broker process
//! (and, for durable broker storage, a `moto` S3 server), each started on a
//! free port for one test and killed when the test ends. Missing tools are
//! installed by `.ci/tools`; a server that cannot start fails the test.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Where `.ci/tools` installs the servers.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("TRIBUTARY_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/tributary/tools"),
    }
}

fn ensure_tools() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let tools = tools_dir();
        if tools.join("bin/tansu").is_file() && tools.join("venv/bin/moto_server").is_file() {
            return;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/tools");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .expect("running .ci/tools");
        assert!(
            status.success(),
            ".ci/tools failed: the test servers cannot be installed"
        );
    });
}

/// Kafka tests run one at a time: each starts a broker and engines that use both cores.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status} before listening:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on port {port} within 60 s");
}

/// A tansu broker process.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    storage: String,
    env: Vec<(String, String)>,
    log: tempfile::NamedTempFile,
}

impl Broker {
    /// A broker keeping everything in memory.
    pub fn start() -> Broker {
        Broker::start_with("memory://tansu/", &[])
    }

    /// A broker on `storage` (e.g. `s3://bucket/`) with extra environment.
    pub fn start_with(storage: &str, env: &[(&str, &str)]) -> Broker {
        ensure_tools();
        let mut broker = Broker {
            child: None,
            port: free_port(),
            storage: storage.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: tempfile::NamedTempFile::new().expect("log file"),
        };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = self.log.reopen().expect("log file");
        let mut child = Command::new(tools_dir().join("bin/tansu"))
            .args([
                "broker",
                "--storage-engine",
                &self.storage,
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting tansu");
        wait_for_port(self.port, &mut child, "tansu", self.log.path());
        self.child = Some(child);
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker process.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A moto S3 server process.
pub struct S3Server {
    child: Child,
    pub port: u16,
    _log: tempfile::NamedTempFile,
}

impl S3Server {
    /// Starts moto on a free port.
    pub fn start() -> S3Server {
        ensure_tools();
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = Command::new(tools_dir().join("venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("starting moto_server");
        wait_for_port(port, &mut child, "moto_server", log.path());
        S3Server {
            child,
            port,
            _log: log,
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto accepts unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "creating bucket {bucket}: {response}"
        );
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
