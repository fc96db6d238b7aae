//! The servers the tests run against: a real `tansu` broker process, a
//! `moto` S3 server and a `fakesnow` Snowflake server, each started on a
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
        if tools.join("bin/tansu").is_file()
            && tools.join("venv/bin/moto_server").is_file()
            && tools.join("venv/bin/fakesnow").is_file()
        {
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

pub fn free_port() -> u16 {
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

/// A server process from the tools venv on a free port, killed when dropped.
struct VenvServer {
    child: Child,
    port: u16,
    _log: tempfile::NamedTempFile,
}

impl VenvServer {
    /// Starts `venv/bin/<program>` with `args(port)` and waits for its port.
    fn start(program: &str, args: impl Fn(&str) -> Vec<String>) -> VenvServer {
        ensure_tools();
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = Command::new(tools_dir().join("venv/bin").join(program))
            .args(args(&port.to_string()))
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        wait_for_port(port, &mut child, program, log.path());
        VenvServer {
            child,
            port,
            _log: log,
        }
    }
}

impl Drop for VenvServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A moto S3 server process.
pub struct S3Server {
    _server: VenvServer,
    pub port: u16,
}

impl S3Server {
    /// Starts moto on a free port.
    pub fn start() -> S3Server {
        let server = VenvServer::start("moto_server", |port| {
            vec!["-H".into(), "127.0.0.1".into(), "-p".into(), port.into()]
        });
        S3Server {
            port: server.port,
            _server: server,
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

/// A fakesnow server (Snowflake's HTTP protocol over DuckDB).
pub struct SnowflakeServer {
    _server: VenvServer,
    pub port: u16,
}

impl SnowflakeServer {
    /// Starts fakesnow on a free port.
    pub fn start() -> SnowflakeServer {
        let server = VenvServer::start("fakesnow", |port| {
            ["-s", "--host", "127.0.0.1", "-p", port]
                .map(String::from)
                .to_vec()
        });
        SnowflakeServer {
            port: server.port,
            _server: server,
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A TCP proxy in front of a server that can be taken down (listener closed,
/// connections cut: clients see refused and reset connections, as with a
/// dead server) and brought back on the same port, while the server behind
/// it keeps its state (moto and fakesnow keep theirs in memory).
pub struct Outage {
    pub port: u16,
    target: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<Mutex<Vec<TcpStream>>>,
    listener: Option<std::thread::JoinHandle<()>>,
}

impl Outage {
    /// A proxy to `127.0.0.1:target`, up.
    pub fn proxy(target: u16) -> Outage {
        let mut outage = Outage {
            port: free_port(),
            target,
            up: Default::default(),
            connections: Default::default(),
            listener: None,
        };
        outage.bring_up();
        outage
    }

    /// Accepts connections again.
    pub fn bring_up(&mut self) {
        use std::sync::atomic::Ordering;
        let listener =
            TcpListener::bind(("127.0.0.1", self.port)).expect("rebinding the proxy port");
        listener.set_nonblocking(true).unwrap();
        self.up.store(true, Ordering::SeqCst);
        let (up, connections, target) = (self.up.clone(), self.connections.clone(), self.target);
        self.listener = Some(std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let mut held = connections.lock().unwrap();
                        held.push(client.try_clone().unwrap());
                        held.push(server.try_clone().unwrap());
                        for (mut from, mut to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
    }

    /// Refuses new connections and cuts the open ones.
    pub fn take_down(&mut self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Some(listener) = self.listener.take() {
            listener.join().unwrap();
        }
        for c in self.connections.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.take_down();
    }
}

impl S3Server {
    /// Uploads every file under `dir` to `s3://bucket/prefix/<relative path>`.
    pub fn upload_dir(&self, dir: &Path, bucket: &str, prefix: &str) {
        use object_store::ObjectStoreExt;
        let store = s3_client(&self.endpoint(), bucket);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for file in crate::support::files_under(dir) {
            let key = format!("{prefix}/{}", file.display());
            let body = std::fs::read(dir.join(&file)).unwrap();
            runtime
                .block_on(store.put(&object_store::path::Path::from(key), body.into()))
                .unwrap();
        }
    }
}

fn s3_client(endpoint: &str, bucket: &str) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .expect("S3 client")
}

/// Copies every object under `s3://bucket/prefix` on `endpoint` into `dest` (same relative paths).
pub fn download(endpoint: &str, bucket: &str, prefix: &str, dest: &Path) -> usize {
    use futures::TryStreamExt;
    use object_store::{ObjectStore, ObjectStoreExt};
    let store = s3_client(endpoint, bucket);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let prefix = object_store::path::Path::from(prefix);
        let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
        for o in &objects {
            let relative = o
                .location
                .as_ref()
                .strip_prefix(prefix.as_ref())
                .unwrap_or(o.location.as_ref());
            let target = dest.join(relative.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            let bytes = store.get(&o.location).await.unwrap().bytes().await.unwrap();
            std::fs::write(target, bytes).unwrap();
        }
        objects.len()
    })
}
