//! The HTTP port of a running engine: metrics, liveness and readiness, the
//! status page (rendered in headless Chromium), and that the shipped
//! dashboard and alerts only use metrics the engine exports.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kafka::Scenario;
use crate::servers::{Broker, free_port, serial};

/// GET `path` on 127.0.0.1:`port`: (status, body), or `None` while nothing listens.
pub(crate) fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The sum of the samples of `metric` whose labels include every one of `labels`.
fn sum(text: &str, metric: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn metrics_and_probes_describe_a_kafka_run() {
    let _serial = serial();
    let events = 20_000;
    let scenario = Scenario::new(Broker::start(), events, 4);
    let path = scenario.pipeline(&[]);
    let port = free_port();
    // No --until-idle: the engine runs until SIGTERM, as in a container.
    let child = scenario
        .engine(
            &path,
            "telemetry",
            &["--http", &format!("127.0.0.1:{port}")],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Live at once; ready once the group has given it partitions.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = None;
    while Instant::now() < deadline {
        match (get(port, "/healthz"), get(port, "/readyz")) {
            (Some((200, _)), Some((200, body))) => {
                ready = Some(body);
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    assert_eq!(ready.as_deref(), Some("ready\n"), "never became ready");

    // Every record read shows up in the validate stage's counters.
    let mut metrics = String::new();
    while Instant::now() < deadline {
        if let Some((200, body)) = get(port, "/metrics") {
            metrics = body;
            if sum(
                &metrics,
                "tributary_records_total",
                &[r#"stage="validate""#, r#"outcome="in""#],
            ) == events
            {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The consumer's lag reaches the gauge while the run lasts.
    let mut lag_seen = false;
    while Instant::now() < deadline && !lag_seen {
        if let Some((200, body)) = get(port, "/metrics") {
            lag_seen = (0..4).all(|p| {
                body.contains(&format!(
                    "tributary_consumer_lag_records{{partition=\"orders/{p}\"}}"
                ))
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(lag_seen, "no lag series for every partition");

    // The status page: JSON with throughput samples, and a chart in a browser.
    let status = wait_for_throughput(port, deadline);
    assert_eq!(status["pipeline"], "orders", "{status}");
    let partitions = status["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 4, "{status}");
    let dlq: u64 = partitions.iter().map(|p| p["dlq"].as_u64().unwrap()).sum();
    assert_eq!(dlq, scenario.dlq_records() as u64, "{status}");
    let rejects: u64 = status["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["door"] == "dlq")
        .map(|r| r["records"].as_u64().unwrap())
        .sum();
    assert_eq!(rejects, dlq, "{status}");
    let shot = scenario.dir.path().join("status.png");
    screenshot(port, &shot);
    // Partitions flow alike here, so their lines overlap: look for the one drawn
    // last (orders/3, the fourth colour). Its legend swatch is 12 rows high; its
    // line, between zero and its rate, spans far more.
    let rows = chart_rows(&shot, [0x9a, 0x67, 0x00]);
    if rows < 30 {
        let kept =
            std::env::temp_dir().join(format!("tributary-status-{}.png", std::process::id()));
        let _ = std::fs::copy(&shot, &kept);
        panic!(
            "the last partition's colour spans {rows} pixel rows in {}: the chart shows no data ({status})",
            kept.display()
        );
    }

    // SIGTERM drains and exits 0, like Ctrl-C.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{:?}", output.status);
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("stopped early"), "{summary}");

    let count = |labels: &[&str]| sum(&metrics, "tributary_records_total", labels);
    assert_eq!(
        count(&[r#"stage="validate""#, r#"outcome="in""#]),
        events,
        "{metrics}"
    );
    assert_eq!(
        count(&[r#"outcome="dlq""#]),
        scenario.dlq_records() as u64,
        "{metrics}"
    );
    assert_eq!(
        count(&[r#"outcome="review""#]),
        scenario.want_review.len() as u64,
        "{metrics}"
    );
    assert_eq!(
        count(&[r#"stage="enrich""#, r#"outcome="out""#]),
        scenario.want_out.len() as u64,
        "{metrics}"
    );
    // One series per partition, named after it, and nothing else.
    for p in 0..4 {
        assert!(
            metrics.contains(&format!(
                r#"partition="orders/{p}",stage="validate",outcome="in""#
            )),
            "partition {p} missing:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("tributary_assigned_partitions 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tributary_stage_duration_seconds_bucket{"),
        "{metrics}"
    );
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
}

/// Polls `/status.json` until its throughput has two rates and some records flowed.
fn wait_for_throughput(port: u16, deadline: Instant) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        if let Some((200, body)) = get(port, "/status.json") {
            last = serde_json::from_str(&body).unwrap();
            let series = last["throughput"]["series"].as_object().unwrap();
            let points = last["throughput"]["times"].as_array().unwrap().len();
            let flowed = series
                .values()
                .flat_map(|v| v.as_array().unwrap())
                .any(|r| r.as_f64().unwrap() > 0.0);
            if points >= 2 && flowed {
                return last;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("no throughput samples on the status page: {last}");
}

/// Renders the status page in headless Chromium to `png`.
fn screenshot(port: u16, png: &Path) {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Chromium is not installed; `bash .ci/tools` installs it (Debian packages chromium, chromium-driver)");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && png.exists(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How many pixel rows of the screenshot hold a pixel of exactly `color`.
fn chart_rows(png: &Path, color: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    let channels = frame.color_type.samples();
    let width = frame.width as usize;
    let mut rows = BTreeSet::new();
    for (i, px) in pixels[..frame.buffer_size()].chunks(channels).enumerate() {
        if px[..3] == color {
            rows.insert(i / width);
        }
    }
    rows.len()
}

/// Every `tributary_*` metric the shipped Grafana dashboard and Prometheus
/// alerts query is one the engine registers.
#[test]
fn the_dashboard_and_alerts_query_metrics_the_engine_exports() {
    let metrics = tributary_engine::telemetry::Metrics::default();
    let families: BTreeSet<&str> = metrics.families().iter().map(String::as_str).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    let names = regex::Regex::new(r"tributary_[a-z_]+").unwrap();
    for file in [
        "deploy/grafana/dashboards/tributary.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for name in names.find_iter(&text).map(|m| m.as_str()) {
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                families.contains(family),
                "{file} queries {name}, which the engine does not export (it has {families:?})"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} metric references found");
}

/// (path, body) of every POST a [`collector`] received.
type Posts = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// An OTLP/HTTP collector stand-in: answers 200 to every POST and keeps (path, body).
fn collector() -> (u16, Posts) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            use std::io::BufRead;
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut length = 0;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                kept.lock().unwrap().push((path, body));
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, received)
}

/// With an OTLP endpoint, each batch and each stage in it becomes a span,
/// exported before the process exits.
#[test]
fn batches_and_stages_are_exported_as_otlp_spans() {
    let (port, received) = collector();
    let ws = crate::support::Workspace::generate(3_000, 0.02, 5);
    let out = ws.tributary(&[
        "run",
        crate::support::orders_pipeline().to_str().unwrap(),
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{port}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let received = received.lock().unwrap();
    let traces: Vec<&Vec<u8>> = received
        .iter()
        .filter(|(path, _)| path == "/v1/traces")
        .map(|(_, body)| body)
        .collect();
    assert!(!traces.is_empty(), "no POST to /v1/traces: {received:?}");
    // Protobuf keeps strings as they are: span names, attribute values, the service.
    let contains = |needle: &[u8]| {
        traces
            .iter()
            .any(|body| body.windows(needle.len()).any(|w| w == needle))
    };
    for needle in [
        &b"batch"[..],
        b"stage",
        b"validate",
        b"transform",
        b"enrich",
        b"tributary",
    ] {
        assert!(
            contains(needle),
            "no {:?} in the exported spans",
            String::from_utf8_lossy(needle)
        );
    }
}
