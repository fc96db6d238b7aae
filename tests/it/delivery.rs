//! The production data path: Parquet, raw zone and dead letters on S3 (moto),
//! loads into Snowflake (fakesnow), retries and pauses while a dependency is
//! down, the error-rate alert, and batch runs over objects in S3.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tributary_connectors::snowflake::{Connection, Credentials, Session};

use tributary_engine::workload::Expected;

use crate::faulty_http::{Fault, FaultyHttp};
use crate::kafka::{SHORT_SESSION, Scenario};
use crate::servers::{Broker, Outage, S3Server, SnowflakeServer, download, serial};
use crate::support::*;

/// The shipped Kafka pipeline with its outputs moved to S3 (`lake` bucket) behind `endpoint`.
fn s3_pipeline(
    scenario: &Scenario,
    endpoint: &str,
    properties: &[(&str, &str)],
    extra: &str,
) -> PathBuf {
    let path = scenario.pipeline(properties);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "      path: ${TRIBUTARY_OUT:-../tributary-demo/out}/orders",
            "      path: s3://lake/orders",
        )
        .replace(
            "dlq:\n  kafka:\n    topic: ${ORDERS_TOPIC:-orders}.dlq",
            "  - raw:\n      name: raw\n      path: s3://lake/raw\n\ndlq:\n  path: s3://lake/dlq",
        )
        .replace(
            "review:\n  kafka:\n    topic: ${ORDERS_TOPIC:-orders}.review",
            "review:\n  path: s3://lake/review",
        );
    let text = format!(
        "{text}\nstorage:\n  s3:\n    endpoint: {endpoint}\n    region: us-east-1\n    access_key_id: test\n    secret_access_key: test\n{extra}"
    );
    assert!(text.contains("s3://lake/raw") && text.contains("s3://lake/review"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Downloads the lake and checks: exactly once, every message in the raw zone once, every invalid record in the DLQ once.
fn assert_lake(scenario: &Scenario, s3: &S3Server, published: usize) {
    let out = scenario.out();
    let _ = std::fs::remove_dir_all(&out);
    for prefix in ["orders", "raw", "dlq", "review"] {
        download(&s3.endpoint(), "lake", prefix, &out.join(prefix));
    }
    scenario.assert_exactly_once();
    let raw = out.join("raw");
    let mut seen = BTreeSet::new();
    for file in files_under(&raw) {
        for batch in read_parquet(&raw.join(&file)) {
            let shown = |name: &str, row: usize| {
                let column = batch.column_by_name(name).expect("raw-zone column");
                arrow::util::display::array_value_to_string(column, row).unwrap()
            };
            for row in 0..batch.num_rows() {
                let key = (shown("_partition", row), shown("_offset", row));
                assert!(seen.insert(key.clone()), "{key:?} archived twice");
            }
        }
        assert!(
            file.to_string_lossy().starts_with("date="),
            "{file:?} is not under date="
        );
    }
    assert_eq!(seen.len(), published, "raw zone rows");
    let letters = dead_letters(&out.join("dlq"));
    assert_eq!(letters.len(), scenario.dlq_records(), "DLQ records");
}

#[test]
fn kafka_to_parquet_raw_zone_and_dlq_on_s3_exactly_once_across_crashes() {
    let _serial = serial();
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    let mut scenario = Scenario::new(Broker::start(), 20_000, 4);
    // A short session, let expire after each crash: a member that joined
    // tansu 0.6's group while a crashed one still counted was seen to be
    // given nothing (and to stop, holding nothing, after twice the session
    // timeout, without reaching its crash point).
    let pipeline = s3_pipeline(&scenario, &s3.endpoint(), &SHORT_SESSION, "");
    let group = "s3-crashy";
    // Crash at the dangerous instants, with new events arriving before each run.
    let mut crashed = Vec::new();
    for (i, (point, nth)) in [
        ("after_publish", 2),
        ("after_manifest", 2),
        ("before_manifest", 2),
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            scenario.publish(5_000, 100 + i as u64);
        }
        let out = scenario
            .engine(&pipeline, group, &["--until-idle", "3s"])
            .env("TRIBUTARY_CRASH_AT", format!("{point}:{nth}"))
            .output()
            .unwrap();
        if text(&out.stderr).contains(&format!("crash point {point} reached")) {
            crashed.push(point);
            std::thread::sleep(Duration::from_secs(8));
        } else {
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
    }
    assert!(crashed.len() >= 2, "only crashed at {crashed:?}");
    let summary = scenario.run_to_end(&pipeline, group);
    assert!(summary["totals"]["records_in"].as_u64().is_some());
    assert_lake(&scenario, &s3, 30_000);
    // Nothing staged is left behind in the bucket.
    let state = scenario.dir.path().join("state");
    download(&s3.endpoint(), "lake", "orders/_tributary/staging", &state);
    assert!(files_under(&state).is_empty(), "staged leftovers");

    // The DLQ on S3 reads back, each letter with the Kafka message it was.
    let out = scenario
        .command(group)
        .args(["dlq", "inspect", "--json", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["records"], scenario.dlq_records() as u64);
    let letters = dead_letters(&scenario.out().join("dlq"));
    for letter in &letters {
        let original = letter["original"].as_str().map(str::as_bytes);
        let keys = original
            .and_then(|o| scenario.want_dlq.get(o))
            .map(|(_, k)| k);
        let kafka = &letter["kafka"];
        assert_eq!(kafka["topic"], "orders", "{letter}");
        if let Some(keys) = keys {
            use base64::Engine;
            let encoded: Vec<String> = keys
                .iter()
                .map(|k| base64::engine::general_purpose::STANDARD.encode(k))
                .collect();
            let key = kafka["key"].as_str().unwrap_or_default().to_string();
            assert!(encoded.contains(&key), "{letter}");
        }
    }

    // Replayed unfixed through the Kafka pipeline, every letter fails again
    // and goes back with its origin; the replayed files move aside, and the
    // raw zone is left alone.
    let summary_path = scenario.dir.path().join("replay.json");
    let out = scenario
        .command(group)
        .args(["dlq", "replay", "--pipeline"])
        .arg(&pipeline)
        .arg("--summary-json")
        .arg(&summary_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    let totals = &summary["totals"];
    assert_eq!(totals["records_in"], letters.len() as u64, "{summary}");
    assert_eq!(totals["dlq"], letters.len() as u64, "{summary}");
    assert_eq!(totals["records_out"], 0, "{summary}");
    let again = scenario.dir.path().join("dlq-after-replay");
    download(&s3.endpoint(), "lake", "dlq", &again);
    let back = dead_letters(&again);
    assert_eq!(back.len(), letters.len());
    assert!(
        back.iter().all(|l| l["kafka"]
            == letters
                .iter()
                .find(|o| o["original"] == l["original"]
                    && o["original_base64"] == l["original_base64"])
                .unwrap()["kafka"]),
        "a letter lost its Kafka origin on the way back"
    );
    assert!(!files_under(&again.join("_tributary/replayed")).is_empty());
    let raw = scenario.dir.path().join("raw-after-replay");
    download(&s3.endpoint(), "lake", "raw", &raw);
    assert_eq!(
        files_under(&raw),
        files_under(&scenario.out().join("raw")),
        "a replay wrote to the raw zone"
    );
}

/// Resident memory of `pid` in MiB.
fn rss_mib(pid: u32) -> u64 {
    rss_kib(pid) / 1024
}

#[test]
fn an_s3_outage_pauses_consumption_and_the_run_completes_exactly_once() {
    let _serial = serial();
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    let mut outage = Outage::proxy(s3.port);
    let mut scenario = Scenario::new(Broker::start(), 20_000, 4);
    let endpoint = format!("http://127.0.0.1:{}", outage.port);
    let pipeline = s3_pipeline(
        &scenario,
        &endpoint,
        &[],
        "retry:\n  initial_delay: 100ms\n  max_delay: 2s\n  max_elapsed: 10s\n",
    );
    let log = scenario.dir.path().join("engine.log");
    let mut child = scenario
        .engine(&pipeline, "s3-outage", &["--until-idle", "5s"])
        .env("RUST_LOG", "warn,tributary_connectors::retry=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    outage.take_down();
    // More events arrive while S3 is down: they wait in Kafka, not in memory.
    scenario.publish(20_000, 8);
    let mut peak_during = 0;
    let started = Instant::now();
    let rss_at_cut = rss_mib(child.id());
    while started.elapsed() < Duration::from_secs(outage_seconds(60)) {
        peak_during = peak_during.max(rss_mib(child.id()));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the engine gave up while S3 was down"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    outage.bring_up();
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the engine did not finish after S3 came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "engine failed: {log}");
    assert!(
        log.contains("transient failure; retrying"),
        "no retry logged:\n{log}"
    );
    assert!(
        log.contains("attempt="),
        "retries name their attempt:\n{log}"
    );
    assert!(log.contains("pausing"), "no pause logged:\n{log}");
    assert!(
        log.contains("target is back; resuming"),
        "no resume logged:\n{log}"
    );
    assert!(
        peak_during < rss_at_cut + 256,
        "memory grew from {rss_at_cut} MiB to {peak_during} MiB during the outage"
    );
    // Whatever the first run left uncommitted, a second run finishes; the lake is exactly once.
    scenario.run_to_end(&pipeline, "s3-outage");
    assert_lake(&scenario, &s3, 40_000);
}

/// How long an outage test keeps its server away: `default` seconds (longer
/// than every timeout and retry budget the test configures), or
/// `TRIBUTARY_OUTAGE_SECONDS` (`benches/outages.sh` sets six minutes).
pub(crate) fn outage_seconds(default: u64) -> u64 {
    std::env::var("TRIBUTARY_OUTAGE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A session on the fakesnow server, in database TRIBUTARY, schema PUBLIC.
fn snowflake_session(url: &str) -> Session {
    let runtime = runtime();
    runtime.block_on(async {
        let connection = Connection {
            url: url.into(),
            account: "test".into(),
            user: "tester".into(),
            credentials: Credentials::Password("secret".into()),
            database: "TRIBUTARY".into(),
            schema: "PUBLIC".into(),
            warehouse: None,
            role: None,
            session_parameters: Default::default(),
        };
        let mut session = Session::login(connection).await.unwrap();
        session
            .query("CREATE DATABASE IF NOT EXISTS TRIBUTARY")
            .await
            .unwrap();
        session
            .query("CREATE SCHEMA IF NOT EXISTS TRIBUTARY.PUBLIC")
            .await
            .unwrap();
        session
    })
}

/// Adds to the pipeline at `path` a Snowflake output `warehouse` loading
/// `orders` into table ORDERS through the server at `url`, in batches of 4
/// files, with short retry budgets.
fn load_into_snowflake(path: &Path, url: &str) {
    let yaml = std::fs::read_to_string(path).unwrap().replace(
        "\ndlq:",
        &format!(
            "  - snowflake:\n      name: warehouse\n      from: orders\n      url: {url}\n      account: test\n      user: tester\n      password: ${{SNOWFLAKE_TEST_PASSWORD}}\n      database: TRIBUTARY\n      schema: PUBLIC\n      table: ORDERS\n      stage: ORDERS_STAGE\n      create_stage: true\n      max_files: 4\n      max_wait: 1s\n\nretry:\n  max_delay: 1s\n  max_elapsed: 3s\n\ndlq:"
        ),
    );
    std::fs::write(path, yaml).unwrap();
}

/// Checks that table ORDERS holds every valid event once, and that the
/// load log names each published file once.
fn assert_loaded_once(session: &mut Session, scenario: &Scenario) {
    let rows = one_row(
        session,
        "SELECT COUNT(*), COUNT(DISTINCT EVENT_ID) FROM ORDERS",
    );
    let want = scenario.want_out.len().to_string();
    assert_eq!(rows[0].as_deref(), Some(want.as_str()), "rows in the table");
    assert_eq!(rows[0], rows[1], "an event loaded twice");
    let files = files_under(&scenario.out().join("orders"));
    let logged = one_row(
        session,
        "SELECT COUNT(*), COUNT(DISTINCT FILE_PATH) FROM TRIBUTARY_LOAD_LOG WHERE TARGET_TABLE = 'ORDERS'",
    );
    assert_eq!(logged[0].as_deref(), Some(files.len().to_string().as_str()));
    assert_eq!(logged[0], logged[1], "a file loaded twice");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn one_row(session: &mut Session, sql: &str) -> Vec<Option<String>> {
    let result = runtime().block_on(session.query(sql)).unwrap();
    assert_eq!(result.rows.len(), 1, "{sql}");
    result.rows[0].clone()
}

#[test]
fn orders_land_in_snowflake_once_across_a_crash_and_a_server_outage() {
    let _serial = serial();
    let server = SnowflakeServer::start();
    let mut outage = Outage::proxy(server.port);
    let mut session = snowflake_session(&server.url());
    let mut scenario = Scenario::new(Broker::start(), 20_000, 4);
    // The crashed members hold their partitions until their sessions time out.
    let path = scenario.pipeline(&SHORT_SESSION);
    load_into_snowflake(&path, &format!("http://127.0.0.1:{}", outage.port));
    let group = "warehouse";

    // Crash right after files are published, before the loader has seen them.
    let out = scenario
        .engine(&path, group, &["--until-idle", "3s"])
        .env("SNOWFLAKE_TEST_PASSWORD", "secret")
        .env("TRIBUTARY_CRASH_AT", "after_publish:3")
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("crash point after_publish reached"),
        "{}",
        text(&out.stderr)
    );

    // Crashes inside a load: after its COPY and after its log insert (the
    // transaction open), and right after its COMMIT. The first one hits the
    // reconciling load of the files the crash above left unloaded.
    for (i, point) in ["after_copy", "after_load_log", "after_load_commit"]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            scenario.publish(2_000, 200 + i as u64);
        }
        let out = scenario
            .engine(&path, group, &["--until-idle", "3s"])
            .env("SNOWFLAKE_TEST_PASSWORD", "secret")
            .env("TRIBUTARY_CRASH_AT", format!("{point}:1"))
            .output()
            .unwrap();
        assert!(
            text(&out.stderr).contains(&format!("crash point {point} reached")),
            "{}",
            text(&out.stderr)
        );
    }

    // The crashed member counts in the group until its 6-s session times
    // out; a run joining before then waits for it, but tansu 0.6 may drop
    // the waiting member from the group at that expiry, leaving the rest
    // for a later run (as the S3 crash test, wait it out first).
    std::thread::sleep(Duration::from_secs(8));

    // Then a run during which Snowflake goes away for a while.
    let log = scenario.dir.path().join("engine.log");
    let summary_path = scenario.dir.path().join("summary.json");
    let mut child = scenario
        .engine(
            &path,
            group,
            &[
                "--until-idle",
                "3s",
                "--summary-json",
                summary_path.to_str().unwrap(),
            ],
        )
        .env("SNOWFLAKE_TEST_PASSWORD", "secret")
        .env("RUST_LOG", "warn,tributary_connectors::retry=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    outage.take_down();
    std::thread::sleep(Duration::from_secs(8));
    outage.bring_up();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("transient failure; retrying"),
        "no retries logged:\n{log}"
    );
    scenario.assert_exactly_once();

    // The table equals the Parquet.
    let rows = one_row(
        &mut session,
        "SELECT COUNT(*), COUNT(DISTINCT EVENT_ID), SUM(TOTAL_CENTS), SUM(ITEM_COUNT) FROM ORDERS",
    );
    let query = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "query",
            "--pipeline",
            path.to_str().unwrap(),
            "SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS ids, SUM(total_cents) AS cents, SUM(item_count) AS items FROM orders",
        ])
        .env("TRIBUTARY_OUT", scenario.out())
        .env("TRIBUTARY_CUSTOMERS", scenario.dir.path().join("customers.csv"))
        .env("SNOWFLAKE_TEST_PASSWORD", "secret")
        .output()
        .unwrap();
    let parquet = text(&query.stdout);
    assert!(query.status.success(), "{}", text(&query.stderr));
    let want = scenario.want_out.len();
    assert_eq!(
        rows[0].as_deref(),
        Some(want.to_string().as_str()),
        "rows in the table; summary: {}\nlog:\n{log}",
        std::fs::read_to_string(&summary_path).unwrap_or_default()
    );
    assert_eq!(rows[0], rows[1], "an event loaded twice");
    // Sums come back as FLOAT from fakesnow (DuckDB); compare them as whole numbers.
    for value in rows.iter().flatten() {
        let whole = value.parse::<f64>().map(|v| format!(" {v:.0} ")).unwrap();
        assert!(
            parquet.contains(&whole),
            "{value} not in `tributary query` output:\n{parquet}"
        );
    }
    // The load log names each published file once.
    let files: Vec<_> = files_under(&scenario.out().join("orders"));
    let logged = one_row(
        &mut session,
        "SELECT COUNT(*), COUNT(DISTINCT FILE_PATH) FROM TRIBUTARY_LOAD_LOG WHERE TARGET_TABLE = 'ORDERS'",
    );
    assert_eq!(logged[0].as_deref(), Some(files.len().to_string().as_str()));
    assert_eq!(logged[0], logged[1]);
}

/// Collects the JSON bodies POSTed to it.
fn webhook() -> (u16, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok()
                && let Ok(json) = serde_json::from_slice(&body)
            {
                store.lock().unwrap().push(json);
            }
            let mut stream = reader.into_inner();
            let _ = stream.write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (port, received)
}

fn wait_for_alert(received: &Mutex<Vec<serde_json::Value>>, status: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(alert) = received
            .lock()
            .unwrap()
            .iter()
            .find(|a| a["status"] == status)
        {
            return alert.clone();
        }
        assert!(Instant::now() < deadline, "no {status} alert arrived");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_error_rate_alert_fires_at_ten_percent_invalid_and_recovers() {
    let _serial = serial();
    let (port, received) = webhook();
    let scenario = Scenario::new(Broker::start(), 100, 2);
    let path = scenario.pipeline(&[]);
    let yaml = std::fs::read_to_string(&path).unwrap()
        + &format!(
            "\nalerts:\n  error_rate:\n    threshold: 0.05\n    window: 3s\n    min_records: 500\n    webhook: http://127.0.0.1:{port}/alerts\n"
        );
    std::fs::write(&path, yaml).unwrap();
    let mut child = scenario
        .engine(&path, "alerting", &["--until-idle", "60s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let publish = |ratio: &str, seed: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args([
                "generate",
                "--events",
                "5000",
                "--invalid-ratio",
                ratio,
                "--seed",
                seed,
                "--to-kafka",
                &scenario.broker.address(),
                "--topic",
                "orders",
                "--partitions",
                "2",
                "--kafka-property",
                "batch.num.messages=1",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    publish("0.10", "21");
    let fired = wait_for_alert(&received, "firing");
    assert_eq!(fired["pipeline"], "orders");
    assert!(fired["rate"].as_f64().unwrap() > 0.05, "{fired}");
    // Clean traffic pushes the bad records out of the window.
    std::thread::sleep(Duration::from_secs(4));
    publish("0", "22");
    let resolved = wait_for_alert(&received, "resolved");
    assert!(resolved["rate"].as_f64().unwrap() <= 0.05, "{resolved}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_batch_run_over_twenty_compressed_objects_in_s3() {
    let _serial = serial();
    let s3 = S3Server::start();
    s3.create_bucket("raw");
    let work = Workspace::generate(40_000, 0.02, 5);
    let input = std::fs::read(work.path("input/orders.ndjson")).unwrap();
    let lines: Vec<&[u8]> = input
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let staging = work.path("objects");
    for (i, chunk) in lines.chunks(lines.len().div_ceil(20)).enumerate() {
        let day = format!("2026-11-{:02}", 1 + i % 10);
        let file = staging.join(&day).join(format!("part-{i:02}.ndjson.zst"));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let mut plain = chunk.join(&b'\n');
        plain.push(b'\n');
        let body = zstd::encode_all(plain.as_slice(), 3).unwrap();
        std::fs::write(&file, body).unwrap();
    }
    s3.upload_dir(&staging, "raw", "orders");
    let pipeline = work.path("s3-batch.yaml");
    let yaml = std::fs::read_to_string(orders_pipeline()).unwrap().replace(
        "../schemas/",
        &format!(
            "{}/",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../schemas")
                .display()
        ),
    ) + &format!(
        "\nstorage:\n  s3:\n    endpoint: {}\n    region: us-east-1\n    access_key_id: test\n    secret_access_key: test\n",
        s3.endpoint()
    );
    std::fs::write(&pipeline, yaml).unwrap();
    let summary_path = work.path("summary.json");
    let out = work
        .command(&[
            "run",
            pipeline.to_str().unwrap(),
            "--summary-json",
            summary_path.to_str().unwrap(),
        ])
        .env("TRIBUTARY_INPUT", "s3://raw/orders/2026-11-*/*.ndjson.zst")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(summary_path).unwrap()).unwrap();
    assert_eq!(summary["partitions"].as_array().unwrap().len(), 20);
    let totals = &summary["totals"];
    assert_eq!(totals["records_in"], 40_000);
    let count = |f: fn(&Expected) -> bool| work.expected.iter().filter(|e| f(e)).count() as u64;
    assert_eq!(
        totals["dlq"].as_u64().unwrap(),
        count(|e| matches!(e, Expected::Dlq(_)))
    );
    assert_eq!(
        totals["review"].as_u64().unwrap(),
        count(|e| matches!(e, Expected::Review { .. }))
    );
    assert_eq!(
        totals["records_out"].as_u64().unwrap(),
        count(|e| matches!(e, Expected::Output { .. }))
    );
}

/// Counts requests by kind and picks the `nth` of each kind listed in `lose`.
fn every_nth(lose: &'static [usize]) -> impl FnMut(&'static str) -> bool {
    let mut counts: std::collections::BTreeMap<&'static str, usize> = Default::default();
    move |kind| {
        let n = counts.entry(kind).or_default();
        *n += 1;
        lose.contains(n)
    }
}

#[test]
fn replies_lost_after_s3_did_the_work_lose_and_double_nothing() {
    let _serial = serial();
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    let pick = Mutex::new(every_nth(&[2, 5, 9]));
    let proxy = FaultyHttp::start(s3.port, move |r| {
        let kind = if r.line.starts_with("PUT ")
            && r.line.contains("/_tributary/commits/")
            && r.has_header("if-none-match")
        {
            "manifest"
        } else if r.line.starts_with("PUT ") && r.has_header("x-amz-copy-source") {
            "publish copy"
        } else if r.line.starts_with("POST ") && r.line.contains("?delete") {
            "delete"
        } else if r.line.starts_with("POST ") && r.line.contains("uploadId=") {
            "multipart completion"
        } else {
            return Fault::None;
        };
        if (*pick.lock().unwrap())(kind) {
            Fault::LoseReply
        } else {
            Fault::None
        }
    });
    let scenario = Scenario::new(Broker::start(), 20_000, 4);
    let pipeline = s3_pipeline(&scenario, &proxy.endpoint(), &[], "");
    scenario.run_to_end(&pipeline, "lost-replies");
    let injected = proxy.injected();
    for (what, sign) in [
        ("manifest writes", "/_tributary/commits/"),
        ("publish copies", "PUT /lake/orders/"),
        ("deletes", "?delete"),
    ] {
        assert!(
            injected.iter().filter(|l| l.contains(sign)).count() >= 2,
            "too few lost replies to {what}: {injected:#?}"
        );
    }
    assert_lake(&scenario, &s3, 20_000);
}

#[test]
fn lost_replies_and_an_expired_session_load_every_file_once() {
    let _serial = serial();
    let server = SnowflakeServer::start();
    let mut session = snowflake_session(&server.url());
    let pick = Mutex::new(every_nth(&[1, 3]));
    let proxy = FaultyHttp::start(server.port, move |r| {
        let sql = r.text();
        let kind = if sql.contains("\"sqlText\":\"COMMIT\"") {
            "commit"
        } else if sql.contains("COPY INTO") {
            "copy"
        } else if sql.contains("INSERT INTO TRIBUTARY_LOAD_LOG") {
            "log insert"
        } else {
            return Fault::None;
        };
        if !(*pick.lock().unwrap())(kind) {
            return Fault::None;
        }
        if kind == "log insert" {
            // Between COPY and the log row: the session expired.
            Fault::Answer(
                200,
                r#"{"success":false,"code":"390112","message":"Your session has expired. Please login again.","data":null}"#.into(),
            )
        } else {
            Fault::LoseReply
        }
    });
    let scenario = Scenario::new(Broker::start(), 20_000, 4);
    let group = "lost-statements";
    // Everything published first, nothing loaded.
    let path = scenario.pipeline(&[]);
    scenario.run_to_end(&path, group);
    load_into_snowflake(&path, &proxy.endpoint());
    // The loader finds them unloaded and loads them, through the faults.
    let logs: Vec<PathBuf> = (0..1)
        .map(|i| scenario.dir.path().join(format!("loader-{i}.log")))
        .collect();
    let mut loaders: Vec<_> = logs
        .iter()
        .map(|log| {
            scenario
                .engine(&path, group, &["--until-idle", "3s"])
                .env("SNOWFLAKE_TEST_PASSWORD", "secret")
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    for (loader, log) in loaders.iter_mut().zip(&logs) {
        let status = loader.wait().unwrap();
        let log = std::fs::read_to_string(log).unwrap();
        assert!(status.success(), "{log}");
    }
    let injected = proxy.injected();
    assert!(injected.len() >= 3, "faults injected: {injected:?}");

    assert_loaded_once(&mut session, &scenario);
}

/// Two instances start at once over files published but not yet loaded:
/// both reconcile, and both find the same files unlogged. One copies the
/// first batch and is frozen before it commits; the other loads everything
/// meanwhile; thawed, the first finds under the lock that its files were
/// committed by another loader, rolls back and skips them.
#[test]
fn two_loaders_over_the_same_unloaded_files_load_each_once() {
    let _serial = serial();
    let server = SnowflakeServer::start();
    let mut session = snowflake_session(&server.url());
    let scenario = Scenario::new(Broker::start(), 20_000, 4);
    let group = "two-loaders";
    let path = scenario.pipeline(&SHORT_SESSION);
    scenario.run_to_end(&path, group);
    load_into_snowflake(&path, &server.url());
    let loader = |name: &str, pause: Option<&str>| {
        let log = scenario.dir.path().join(format!("{name}.log"));
        let mut command = scenario.engine(&path, group, &["--until-idle", "3s"]);
        command
            .env("SNOWFLAKE_TEST_PASSWORD", "secret")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(point) = pause {
            command.env("TRIBUTARY_PAUSE_AT", point);
        }
        (command.spawn().unwrap(), log)
    };
    let (mut first, first_log) = loader("first", Some("after_copy:1"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&first_log)
        .unwrap_or_default()
        .contains("pause point after_copy reached")
    {
        assert!(Instant::now() < deadline, "the first loader never copied");
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first loader stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut second, second_log) = loader("second", None);
    // Thawed once the second has loaded everything, while both still run.
    let want = scenario.want_out.len().to_string();
    while one_row(&mut session, "SELECT COUNT(*) FROM ORDERS")[0].as_deref() != Some(&want) {
        assert!(
            Instant::now() < deadline,
            "the second loader never loaded the files"
        );
        assert!(
            second.try_wait().unwrap().is_none(),
            "the second loader stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    crate::faults::signal(first.id(), "CONT");
    let status =
        crate::kafka::wait_exit(&mut second, Duration::from_secs(300), "the second loader");
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&second_log).unwrap()
    );
    let status = crate::kafka::wait_exit(&mut first, Duration::from_secs(300), "the first loader");
    let log = std::fs::read_to_string(&first_log).unwrap();
    assert!(status.success(), "{log}");
    assert_loaded_once(&mut session, &scenario);
    // Snowflake's read-committed check finds the files logged twice; DuckDB
    // (fakesnow) refuses the lock row's update as a write conflict first
    // (an HTTP 500 naming the statement), and the load is retried.
    assert!(
        log.contains("another loader committed some of these files meanwhile")
            || log.contains("UPDATE TRIBUTARY_LOAD_LOCK"),
        "the first loader's copy was not rolled back: the test tests nothing\n{log}"
    );
}
