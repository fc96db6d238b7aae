//! The HTTP port of a running engine: metrics, liveness and readiness.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::kafka::Scenario;
use crate::servers::{Broker, free_port, serial};

/// GET `path` on 127.0.0.1:`port`: (status, body), or `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
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
    let mut child = scenario
        .engine(
            &path,
            "telemetry",
            &["--until-idle", "6s", "--http", &format!("127.0.0.1:{port}")],
        )
        .stdout(std::process::Stdio::null())
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
    let status = child.wait().unwrap();
    assert!(status.success());

    let count = |labels: &[&str]| sum(&metrics, "tributary_records_total", labels);
    assert_eq!(
        count(&[r#"stage="validate""#, r#"outcome="in""#]),
        events,
        "{metrics}"
    );
    assert_eq!(
        count(&[r#"outcome="dlq""#]),
        scenario.want_dlq.len() as u64,
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
