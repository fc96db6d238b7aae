//! The server processes some tests need besides PostgreSQL and Redis: a
//! `tansu` Kafka broker, an `aiosmtpd` SMTP server and an OpenID provider
//! (`oidc-provider` in `tests/oidc/provider.mjs`), installed by
//! `.ci/tools` (run from here when missing) and killed when dropped. A
//! server that cannot start fails the test.

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
    fn spawn(what: &str, mut command: Command, port: u16) -> Process {
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
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tansu broker keeping everything in memory, on `port`.
pub fn kafka(port: u16) -> Process {
    ensure_tools();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(tools_dir().join("bin/tansu"));
    command.args([
        "broker",
        "--storage-engine",
        "memory://tansu/",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ]);
    Process::spawn("tansu", command, port)
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
/// bearer token, and returns its output: the checks are no 5xx, and every
/// status, content type, header and body as the document says. Logout is
/// left out so the token stays good for the authenticated routes.
pub fn schemathesis(document: &str, bearer: &str) -> std::process::Output {
    ensure_tools();
    // It keeps a cache in its working directory: not in the repository.
    let scratch = tempfile::tempdir().expect("a scratch directory");
    Command::new(tools_dir().join("venv/bin/schemathesis"))
        .current_dir(scratch.path())
        .args([
            "run",
            document,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,negative_data_rejection",
            "--header",
            &format!("Authorization: Bearer {bearer}"),
            "--exclude-path",
            "/auth/logout",
            "--max-examples",
            "100",
            "--seed",
            "1",
            "--workers",
            "2",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("running schemathesis")
}
