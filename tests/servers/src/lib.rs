//! The server processes the services' tests need besides the machine's
//! PostgreSQL and Redis: a `tansu` Kafka broker, an `aiosmtpd` SMTP server,
//! an OpenID provider (`oidc-provider` in `tests/oidc/provider.mjs`),
//! `schemathesis` runs, all installed by `.ci/tools` (run from here when
//! missing), and private PostgreSQL servers, a primary with a streaming
//! replica ([`postgres`]). Every process is killed when dropped. A server
//! that cannot start fails the test.

// A harness's unwrap is an assertion: a failure shows where and why.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod issuer;
pub mod postgres;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where `.ci/tools` installs the servers.
fn tools_dir() -> PathBuf {
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
            && tools.join("venv/bin/aiosmtpd").is_file()
            && tools.join("venv/bin/moto_server").is_file()
            && tools
                .join("oidc/node_modules/oidc-provider/lib/index.js")
                .is_file()
        {
            return;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/tools");
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A server process, killed when dropped.
pub struct Process {
    child: Child,
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl Process {
    /// Starts `command` and waits until it listens on `port` (60 s at most).
    pub fn spawn(what: &str, mut command: Command, port: u16) -> Process {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let mut child = command
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("the log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{what} exited with {status} before listening:\n{}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not listen on {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Process { child, port, log }
    }

    /// What the server wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it as an orderly shutdown does: SIGTERM, then SIGKILL if it
    /// has not exited within `grace`.
    pub fn terminate(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tansu broker keeping everything in memory, on `port`.
pub fn kafka(port: u16) -> Broker {
    Broker::start_on(port, "memory://tansu/", &[])
}

/// A tansu broker process that can be stopped and started again on the
/// same port and storage (with S3 storage, what it had survives).
pub struct Broker {
    process: Option<Process>,
    pub port: u16,
    storage: String,
    env: Vec<(String, String)>,
}

impl Broker {
    /// A broker on `port` keeping its data in `storage` (`memory://tansu/`,
    /// or `s3://bucket/` with the S3 variables of [`S3Server::env`]).
    pub fn start_on(port: u16, storage: &str, env: &[(String, String)]) -> Broker {
        ensure_tools();
        let mut broker = Broker {
            process: None,
            port,
            storage: storage.to_string(),
            env: env.to_vec(),
        };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut command = Command::new(tools_dir().join("bin/tansu"));
        command
            .args([
                "broker",
                "--storage-engine",
                &self.storage,
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        self.process = Some(Process::spawn("tansu", command, self.port));
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Restarts it on the same port and storage, as a rolling restart
    /// does: SIGTERM (10 s to finish), then a new process.
    pub fn restart(&mut self) {
        if let Some(process) = self.process.take() {
            process.terminate(Duration::from_secs(10));
        }
        self.launch();
    }
}

/// A moto S3 server.
pub struct S3Server {
    _process: Process,
    pub port: u16,
}

impl S3Server {
    /// Starts moto on a free port.
    pub fn start() -> S3Server {
        ensure_tools();
        let port = free_port();
        let mut command = Command::new(tools_dir().join("venv/bin/moto_server"));
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        S3Server {
            _process: Process::spawn("moto", command, port),
            port,
        }
    }

    /// The variables a client (tansu, object_store) needs to use it.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
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
        .expect("asking moto for a bucket");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("moto's answer");
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "creating bucket {bucket}: {response}"
        );
    }
}

/// An SMTP server that keeps every mail it accepts in a Maildir.
pub struct Smtp {
    pub process: Process,
    maildir: tempfile::TempDir,
}

impl Smtp {
    pub fn start() -> Smtp {
        ensure_tools();
        let maildir = tempfile::tempdir().expect("a maildir");
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir(maildir.path().join(sub)).expect("the maildir's folders");
        }
        let port = free_port();
        let mut command = Command::new(tools_dir().join("venv/bin/aiosmtpd"));
        command.args([
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ]);
        command.arg(maildir.path());
        let process = Process::spawn("aiosmtpd", command, port);
        Smtp { process, maildir }
    }

    /// `smtp://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.process.port)
    }

    /// Every mail received so far, as text.
    pub fn mails(&self) -> Vec<String> {
        let mut mails = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir.path().join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    mails.push(text);
                }
            }
        }
        mails
    }

    /// Waits up to 20 s for a mail to `to` whose text contains `needle`.
    pub async fn wait_for(&self, to: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(mail) = self.mails().into_iter().find(|m| {
                m.lines()
                    .any(|l| l.eq_ignore_ascii_case(&format!("to: {to}")))
                    && m.contains(needle)
            }) {
                return mail;
            }
            assert!(
                Instant::now() < deadline,
                "no mail to {to} containing {needle:?} within 20 s; received: {:?}\n{}",
                self.mails(),
                self.process.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An OpenID provider (`tests/oidc/provider.mjs`) with one client,
/// `tributary` / `tributary-test-secret`, redirecting to `redirect_uri`.
pub fn oidc_provider(redirect_uri: &str) -> Process {
    ensure_tools();
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/oidc/provider.mjs");
    let mut command = Command::new("node");
    command
        .arg(script)
        .arg(port.to_string())
        .arg(redirect_uri)
        .env("OIDC_PROVIDER_DIR", tools_dir().join("oidc"));
    Process::spawn("oidc-provider", command, port)
}

/// Runs schemathesis against the OpenAPI document at `document` with a
/// bearer token, and fails with its report unless every check passed: no
/// 5xx, every status, content type, header and body as the document says,
/// no invalid input accepted. The paths in `exclude` are left out (a
/// logout would spend the token). It blocks: run it on a blocking thread.
pub fn assert_schemathesis_passes(document: &str, bearer: &str, exclude: &[&str]) {
    ensure_tools();
    // It keeps a cache in its working directory: not in the repository.
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let mut command = Command::new(tools_dir().join("venv/bin/schemathesis"));
    command.current_dir(scratch.path());
    command
        .args([
            "run",
            document,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,negative_data_rejection",
            "--header",
            &format!("Authorization: Bearer {bearer}"),
            "--max-examples",
            "100",
            "--seed",
            "1",
            // One worker: CPython 3.11's ast module is not thread-safe, and
            // hypothesis's lambda descriptions use it (a SystemError seen
            // with two).
            "--workers",
            "1",
        ])
        .args(exclude.iter().flat_map(|path| ["--exclude-path", path]))
        .env("NO_COLOR", "1");
    let output = command.output().expect("running schemathesis");
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// This test process's part of names that outlive it (its databases): its
/// pid and a random part. A pid alone is reused by a later run on a busy
/// machine (pid_max 32768): a run then found the databases of one that
/// had had its pid, their keys sealed with that run's keyring.
pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{}_{:08x}", std::process::id(), fastrand::u32(..)))
}

/// Reads `topic` from the start as (key, JSON value), in the order the
/// messages arrive (each partition's in offset order): at least `n` of
/// them (or fails after a minute, plus a second per thousand), then on
/// until none came for 2 s.
pub fn consume(brokers: &str, topic: &str, n: usize) -> Vec<(String, serde_json::Value)> {
    let limit = Duration::from_secs(60 + n as u64 / 1000);
    let messages = read_topic(brokers, topic, n, limit);
    assert!(
        messages.len() >= n,
        "{} of {n} events on {topic} within {limit:?}",
        messages.len()
    );
    messages
}

/// [`consume`] that returns what it read when `limit` passes before `n`.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    n: usize,
    limit: Duration,
) -> Vec<(String, serde_json::Value)> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", fastrand::u64(..)))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a Kafka consumer");
    consumer.subscribe(&[topic]).expect("subscribing");
    let deadline = Instant::now() + limit;
    let mut messages = Vec::new();
    let mut last = Instant::now();
    while (messages.len() < n && Instant::now() < deadline)
        || last.elapsed() < Duration::from_secs(2)
    {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            last = Instant::now();
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let value = serde_json::from_slice(message.payload().unwrap_or_default())
                .expect("a JSON event");
            messages.push((key, value));
        }
    }
    messages
}

/// Creates `topic` with `partitions` (an existing topic is left as is).
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("a Kafka admin client");
    // On a thread of its own: callers may be inside a runtime.
    let topic_name = topic.to_string();
    let results = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(admin.create_topics(
            &[NewTopic::new(
                &topic_name,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        ))
    })
    .join()
    .expect("the topic thread")
    .expect("creating topics");
    for result in results {
        if let Err((name, code)) = result {
            assert_eq!(
                code,
                rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                "creating {name}"
            );
        }
    }
}
