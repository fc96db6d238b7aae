//! Dead-letter tools: `dlq inspect`, `dlq replay` through a fixed pipeline
//! (exactly once, twice in a row), and `run --dry-run`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tributary_engine::workload::{Expected, InvalidClass};

use crate::support::*;

/// The bundled orders pipeline with `not_in_future` removed (the "fix") and
/// the schema path made absolute, written into the workspace.
fn fixed_pipeline(ws: &Workspace) -> PathBuf {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/");
    let text = std::fs::read_to_string(orders_pipeline())
        .unwrap()
        .replace("../schemas/", schemas.to_str().unwrap())
        .replace(
            "        - name: not_in_future\n          sql: occurred_at <= now() + INTERVAL '1 day'\n          severity: error\n",
            "",
        );
    assert!(!text.contains("not_in_future"), "the fix did not apply");
    let path = ws.path("orders-fixed.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs a `dlq replay` command with `--summary-json summary`; returns the summary.
fn run_replay(mut replay: std::process::Command, summary: &Path) -> serde_json::Value {
    let out = replay.arg("--summary-json").arg(summary).output().unwrap();
    assert!(
        out.status.success(),
        "the replay failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap()
}

/// Checks the first replay of `queued` dead letters, `fixed` of which the
/// fix lets through validate; returns how many reached the output.
fn fixed_ones_pass(first: &serde_json::Value, queued: usize, fixed: usize) -> u64 {
    assert_eq!(first["totals"]["records_in"], queued as u64);
    // A fixed record now passes validate; later stages may still send it to
    // review (an unknown customer, say), like any other record.
    let (out, review) = (
        first["totals"]["records_out"].as_u64().unwrap(),
        first["totals"]["review"].as_u64().unwrap(),
    );
    assert!(out > 0);
    assert_eq!(out + review, fixed as u64, "{first}");
    out
}

fn event_id(letter: &serde_json::Value) -> String {
    let original: serde_json::Value =
        serde_json::from_str(letter["original"].as_str().unwrap()).unwrap();
    original["event_id"].as_str().unwrap().to_string()
}

#[test]
fn inspect_counts_dead_letters_by_stage_rule_and_reason() {
    let ws = Workspace::generate(5_000, 0.05, 11);
    let summary = ws.run_orders();
    let dlq = ws.path("out/dlq");
    let out = ws.tributary(&["dlq", "inspect", dlq.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["records"], summary["totals"]["dlq"], "{report}");
    // Every rule the run counted, with the same count, and examples with their source line.
    let by_rule = summary["totals"]["dlq_by_rule"].as_object().unwrap();
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), by_rule.len(), "{report}");
    for group in groups {
        let key = format!(
            "{}/{}",
            group["stage"].as_str().unwrap(),
            group["rule"].as_str().unwrap()
        );
        assert_eq!(group["records"], by_rule[&key], "{key}");
        let example = &group["reasons"][0]["examples"][0];
        assert!(
            example[0].as_str().unwrap().contains("orders.ndjson:"),
            "{example}"
        );
    }
    // The text form names the rules and their shares; --pipeline finds the same queue.
    let out = ws.tributary(&[
        "dlq",
        "inspect",
        "--pipeline",
        orders_pipeline().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains("validate/not_in_future:"), "{report}");
    assert!(report.contains(" %)"), "{report}");
}

/// What a file run of the orders pipeline rejected.
struct Rejected {
    ws: Workspace,
    dlq: PathBuf,
    orders: PathBuf,
    /// The dead letters, as read back.
    before: Vec<serde_json::Value>,
    /// Event ids of the letters the fix lets through.
    fixed: BTreeSet<String>,
}

/// Runs the orders pipeline over 5,000 generated events (5 % invalid, `seed`).
fn rejected_by_a_run(seed: u64) -> Rejected {
    let ws = Workspace::generate(5_000, 0.05, seed);
    ws.run_orders();
    let (dlq, orders) = (ws.path("out/dlq"), ws.path("out/orders"));
    let before = dead_letters(&dlq);
    let fixed = before
        .iter()
        .filter(|l| l["rule"] == "not_in_future")
        .map(event_id)
        .collect();
    Rejected {
        ws,
        dlq,
        orders,
        before,
        fixed,
    }
}

#[test]
fn replay_sends_fixed_records_to_the_output_once_and_the_rest_back() {
    let Rejected {
        ws,
        dlq,
        orders,
        before,
        fixed,
    } = rejected_by_a_run(12);
    let expected_future = ws
        .expected
        .iter()
        .filter(|e| matches!(e, Expected::Dlq(InvalidClass::FutureTimestamp)))
        .count();
    assert!(!fixed.is_empty() && fixed.len() == expected_future);
    let ids_before: BTreeSet<String> = parquet_strings(&orders, "event_id").into_iter().collect();
    let pipeline = fixed_pipeline(&ws);

    let replay = |round: usize| {
        let command = ws.command(&["dlq", "replay", "--pipeline", pipeline.to_str().unwrap()]);
        run_replay(command, &ws.path(&format!("replay-{round}.json")))
    };

    let first = replay(1);
    let out = fixed_ones_pass(&first, before.len(), fixed.len());
    let ids_after: BTreeSet<String> = parquet_strings(&orders, "event_id").into_iter().collect();
    let gained: BTreeSet<String> = ids_after.difference(&ids_before).cloned().collect();
    assert!(
        gained.is_subset(&fixed),
        "the output gained records that were not fixed"
    );
    assert_eq!(
        gained.len() as u64,
        out,
        "the output gained exactly the fixed records that pass"
    );
    assert_eq!(
        parquet_strings(&orders, "event_id").len(),
        ids_after.len(),
        "an event is in the output twice"
    );

    // The queue now holds exactly the records still failing, with their first source.
    let after = dead_letters(&dlq);
    assert_eq!(after.len(), before.len() - fixed.len());
    assert!(after.iter().all(|l| l["rule"] != "not_in_future"));
    assert!(
        after
            .iter()
            .all(|l| l["source"].as_str().unwrap().contains("orders.ndjson:")
                && l["source"].as_str().unwrap().contains("(replayed from ")),
        "{:?}",
        after.first()
    );
    let originals = |letters: &[serde_json::Value]| -> BTreeSet<String> {
        letters
            .iter()
            .map(|l| {
                l.get("original")
                    .or(l.get("original_base64"))
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let still_failing: Vec<serde_json::Value> = before
        .iter()
        .filter(|l| l["rule"] != "not_in_future")
        .cloned()
        .collect();
    assert_eq!(
        originals(&after),
        originals(&still_failing),
        "original bytes (including non-UTF-8 ones) survive the round trip"
    );
    let archived = files_under(&dlq.join("_tributary/replayed"));
    assert!(!archived.is_empty());

    // Again: nothing new reaches the output; the failing records stay once in the queue.
    let output_files = files_under(&orders);
    let second = replay(2);
    assert_eq!(second["totals"]["records_out"], 0);
    assert_eq!(files_under(&orders), output_files);
    assert_eq!(parquet_strings(&orders, "event_id").len(), ids_after.len());
    assert_eq!(dead_letters(&dlq).len(), after.len());
}

/// A replay killed after its run, before it moved its input out of the
/// queue, left the letters it wrote beside the ones it replayed. Replayed
/// again (here with the fix, while the killed one ran without it), each
/// fixed record reaches the output once, and the queue ends with each
/// still-failing record once; inspect counts them once meanwhile.
#[test]
fn a_replay_killed_before_its_archive_and_run_again_doubles_nothing() {
    let Rejected {
        ws,
        dlq,
        orders,
        before,
        fixed,
    } = rejected_by_a_run(14);
    assert!(!fixed.is_empty());
    let ids_before = parquet_strings(&orders, "event_id");

    // Unfixed: every record fails again and is written back; killed before
    // the first file is archived.
    let killed = ws
        .command(&[
            "dlq",
            "replay",
            "--pipeline",
            orders_pipeline().to_str().unwrap(),
        ])
        .env("TRIBUTARY_CRASH_AT", "archive:1")
        .output()
        .unwrap();
    assert!(
        !killed.status.success(),
        "the replay should have been killed"
    );
    assert!(
        dead_letters(&dlq).len() > before.len(),
        "the killed replay wrote no letters beside its input: the test tests nothing"
    );
    let inspect = ws.tributary(&["dlq", "inspect", dlq.to_str().unwrap(), "--json"]);
    assert!(inspect.status.success(), "{}", text(&inspect.stderr));
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(
        report["records"],
        before.len(),
        "inspect counts a record twice"
    );

    let pipeline = fixed_pipeline(&ws);
    let command = ws.command(&["dlq", "replay", "--pipeline", pipeline.to_str().unwrap()]);
    let summary = run_replay(command, &ws.path("replay.json"));
    let out = fixed_ones_pass(&summary, before.len(), fixed.len());
    let ids_after = parquet_strings(&orders, "event_id");
    let unique: BTreeSet<&String> = ids_after.iter().collect();
    assert_eq!(
        unique.len(),
        ids_after.len(),
        "an event is in the output twice"
    );
    assert_eq!(ids_after.len() as u64, ids_before.len() as u64 + out);
    // Each record still failing once, named by where it was first read.
    let first_source = |l: &serde_json::Value| -> String {
        let source = l["source"].as_str().unwrap();
        source.split(" (replayed from ").next().unwrap().to_string()
    };
    let after: Vec<String> = dead_letters(&dlq).iter().map(first_source).collect();
    let want: Vec<String> = before
        .iter()
        .filter(|l| l["rule"] != "not_in_future")
        .map(first_source)
        .collect();
    let (mut sorted_after, mut sorted_want) = (after.clone(), want.clone());
    sorted_after.sort();
    sorted_want.sort();
    assert_eq!(
        sorted_after, sorted_want,
        "the queue lost a record, or holds one twice"
    );
}

#[test]
fn a_dry_run_reports_where_records_would_go_and_writes_nothing() {
    let ws = Workspace::generate(2_000, 0.05, 13);
    let out = ws.tributary(&[
        "run",
        orders_pipeline().to_str().unwrap(),
        "--dry-run",
        "--sample",
        "300",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    let first = &ws.expected[..300];
    let dlq = first
        .iter()
        .filter(|e| matches!(e, Expected::Dlq(_)))
        .count();
    let review = first
        .iter()
        .filter(|e| matches!(e, Expected::Review { .. }))
        .count();
    assert!(report.contains("dry run: 300 records"), "{report}");
    assert!(
        report.contains(&format!("→ outputs (orders): {}", 300 - dlq - review)),
        "{report}"
    );
    assert!(report.contains(&format!("→ dlq: {dlq}\n")), "{report}");
    assert!(
        report.contains(&format!("→ review: {review}\n")),
        "{report}"
    );
    assert!(report.contains("orders.ndjson:"), "{report}");
    assert!(!ws.path("out").exists(), "a dry run wrote output");
}

#[test]
fn a_dry_run_on_kafka_samples_what_the_group_would_read_next_and_consumes_nothing() {
    let _serial = crate::servers::serial();
    let scenario = crate::kafka::Scenario::new(crate::servers::Broker::start(), 600, 2);
    let pipeline = scenario.pipeline(&[]);
    let out = scenario
        .engine(&pipeline, "dry", &["--dry-run", "--sample", "200"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains("dry run: 200 records"), "{report}");
    assert!(report.contains("orders/"), "{report}");
    assert!(!scenario.out().exists(), "a dry run wrote output");
    // The group still reads everything, exactly once.
    scenario.run_to_end(&pipeline, "dry");
    scenario.assert_exactly_once();
}

#[test]
fn replay_of_file_letters_through_a_kafka_pipeline_names_the_record_it_cannot_place() {
    let ws = Workspace::generate(200, 0.05, 14);
    ws.run_orders();
    let kafka = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/orders-kafka.yaml");
    let out = ws.tributary(&[
        "dlq",
        "replay",
        ws.path("out/dlq").to_str().unwrap(),
        "--pipeline",
        kafka.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let error = text(&out.stderr);
    assert!(error.contains("carries no Kafka topic"), "{error}");
    assert!(error.contains("orders.ndjson:"), "{error}");
    assert!(
        !ws.path("out/dlq/_tributary").exists(),
        "nothing was archived"
    );
}

/// (event_id, kafka_partition, kafka_offset) of every row under `dir`.
fn consumed_at(dir: &Path) -> Vec<(String, i32, i64)> {
    use arrow::array::{Int32Array, Int64Array, StringArray};
    let mut rows = Vec::new();
    for file in files_under(dir) {
        for batch in read_parquet(&dir.join(file)) {
            let column = |name: &str| batch.column_by_name(name).unwrap().clone();
            let (ids, partitions, offsets) = (
                column("event_id"),
                column("kafka_partition"),
                column("kafka_offset"),
            );
            let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
            let partitions = partitions.as_any().downcast_ref::<Int32Array>().unwrap();
            let offsets = offsets.as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..batch.num_rows() {
                rows.push((
                    ids.value(i).to_string(),
                    partitions.value(i),
                    offsets.value(i),
                ));
            }
        }
    }
    rows
}

/// The Kafka pipeline run to the end over `events` generated orders (in
/// consumer group `group`); its dead-letter topic's name.
fn kafka_run(events: u64, group: &str) -> (crate::kafka::Scenario, PathBuf, String) {
    let scenario = crate::kafka::Scenario::new(crate::servers::Broker::start(), events, 2);
    let pipeline = scenario.pipeline(&[]);
    scenario.run_to_end(&pipeline, group);
    (scenario, pipeline, format!("{}.dlq", crate::kafka::TOPIC))
}

/// `dlq inspect kafka://…/topic --json` with the scenario's variables: the
/// report, or what the command said on failure.
fn inspect_topic(
    scenario: &crate::kafka::Scenario,
    group: &str,
    topic: &str,
) -> Result<serde_json::Value, String> {
    let queue = format!("kafka://{}/{topic}", scenario.broker.address());
    let out = scenario
        .command(group)
        .args(["dlq", "inspect", &queue, "--json"])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn replay_from_the_dead_letter_topic_through_the_fixed_kafka_pipeline_once() {
    use crate::kafka::{Record, read_topic};
    let _serial = crate::servers::serial();
    let (scenario, pipeline, dlq_topic) = kafka_run(1_500, "replayed");
    let brokers = scenario.broker.address();
    let before = read_topic(&brokers, &dlq_topic);
    let rule = |m: &Record| m.header("tributary.errors.rule").unwrap_or_default();
    let fixed: Vec<&Record> = before
        .iter()
        .filter(|m| rule(m) == "not_in_future")
        .collect();
    assert!(!fixed.is_empty() && fixed.len() < before.len());

    // inspect reads the topic back, reasons and all.
    let report = inspect_topic(&scenario, "replayed", &dlq_topic).unwrap();
    assert_eq!(report["records"], before.len() as u64, "{report}");

    let fixed_pipeline = scenario.dir.path().join("orders-kafka-fixed.yaml");
    let text_fixed = std::fs::read_to_string(&pipeline).unwrap().replace(
        "        - name: not_in_future\n          sql: occurred_at <= now() + INTERVAL '1 day'\n          severity: error\n",
        "",
    );
    assert!(
        !text_fixed.contains("not_in_future"),
        "the fix did not apply"
    );
    std::fs::write(&fixed_pipeline, text_fixed).unwrap();
    let orders = scenario.out().join("orders");
    let rows_before = consumed_at(&orders);

    let replay = |round: usize| {
        let mut command = scenario.command("replayed");
        command
            .args(["dlq", "replay", "--pipeline"])
            .arg(&fixed_pipeline);
        run_replay(
            command,
            &scenario.dir.path().join(format!("replay-{round}.json")),
        )
    };

    let first = replay(1);
    let passed = fixed_ones_pass(&first, before.len(), fixed.len());

    // The output gained exactly fixed records, each once, with the partition
    // and offset they were first consumed at.
    let consumed: BTreeMap<String, (i32, i64)> = fixed
        .iter()
        .map(|m| {
            let event: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let at = |h: &str| m.header(h).unwrap().parse::<i64>().unwrap();
            (
                event["event_id"].as_str().unwrap().to_string(),
                (
                    at("tributary.errors.partition") as i32,
                    at("tributary.errors.offset"),
                ),
            )
        })
        .collect();
    let rows_after = consumed_at(&orders);
    let gained: Vec<&(String, i32, i64)> = rows_after
        .iter()
        .filter(|r| !rows_before.contains(r))
        .collect();
    assert_eq!(gained.len() as u64, passed);
    for (id, partition, offset) in &gained {
        assert_eq!(consumed.get(id), Some(&(*partition, *offset)), "{id}");
    }
    let ids: BTreeSet<&String> = rows_after.iter().map(|r| &r.0).collect();
    assert_eq!(
        ids.len(),
        rows_after.len(),
        "an event is in the output twice"
    );

    // What still fails went back to the topic once, with its original key and origin.
    let original: BTreeMap<&[u8], &Record> =
        before.iter().map(|m| (m.payload.as_slice(), m)).collect();
    let after = read_topic(&brokers, &dlq_topic);
    let seen: BTreeSet<(i32, i64)> = before.iter().map(|m| (m.partition, m.offset)).collect();
    let appended: Vec<&Record> = after
        .iter()
        .filter(|m| !seen.contains(&(m.partition, m.offset)))
        .collect();
    assert_eq!(appended.len(), before.len() - fixed.len());
    for m in &appended {
        let first = original[m.payload.as_slice()];
        assert_ne!(rule(m), "not_in_future");
        assert_eq!(m.key, first.key, "the original key is kept");
        for h in [
            "tributary.errors.topic",
            "tributary.errors.partition",
            "tributary.errors.offset",
        ] {
            assert_eq!(m.header(h), first.header(h), "{h}");
        }
    }

    // Again: only what was appended since is replayed, and nothing new reaches the output.
    let files = files_under(&orders);
    let second = replay(2);
    assert_eq!(second["totals"]["records_in"], appended.len() as u64);
    assert_eq!(second["totals"]["records_out"], 0);
    assert_eq!(files_under(&orders), files);

    // inspect with the pipeline shows what its next replay would take: exactly what still fails.
    let inspect = |extra: &[&str]| {
        let out = scenario
            .command("replayed")
            .args(["dlq", "inspect", "--json", "--pipeline"])
            .arg(&fixed_pipeline)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["records"].clone()
    };
    assert_eq!(inspect(&[]), appended.len() as u64);
    // The whole topic holds each still-failing record three times (first
    // rejected, sent back by each replay): inspect counts each bad record once.
    assert_eq!(inspect(&["--all"]), before.len() as u64);
}

/// A dead-letter topic that is still being written to: inspect (and
/// replay, which reads the same way) take what was there when they began
/// and end, instead of waiting for the topic to go quiet.
#[test]
fn inspect_of_a_dead_letter_topic_still_written_to_ends() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use crate::kafka::read_topic;
    let _serial = crate::servers::serial();
    let (scenario, _, dlq_topic) = kafka_run(1_000, "live");
    let brokers = scenario.broker.address();
    let letters = read_topic(&brokers, &dlq_topic).len();
    assert!(letters > 0);

    // A producer keeps appending to the topic, for longer than a reader
    // waiting for quiet would take to give up (60 s).
    let (stop, written) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let writer = {
        let (stop, written, brokers, topic) = (
            stop.clone(),
            written.clone(),
            brokers.clone(),
            dlq_topic.clone(),
        );
        std::thread::spawn(move || {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("linger.ms", "0")
                .create()
                .unwrap();
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) {
                let n = written.load(Ordering::SeqCst);
                let payload = format!("{{\"live\":{n}}}");
                let record = BaseRecord::<[u8], [u8]>::to(&topic).payload(payload.as_bytes());
                if producer.send(record).is_ok() {
                    written.fetch_add(1, Ordering::SeqCst);
                }
                producer.poll(Duration::ZERO);
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = producer.flush(Duration::from_secs(10));
            started.elapsed()
        })
    };
    while written.load(Ordering::SeqCst) < 50 {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let present = letters + written.load(Ordering::SeqCst);
    let report = inspect_topic(&scenario, "live", &dlq_topic);
    stop.store(true, Ordering::SeqCst);
    let wrote_for = writer.join().unwrap();
    assert!(
        wrote_for < Duration::from_secs(120),
        "inspect ended only once the topic went quiet"
    );
    let records = report.unwrap()["records"].as_u64().unwrap() as usize;
    assert!(
        records >= present,
        "inspect read {records} letters, fewer than the {present} present when it began"
    );
}

/// A replay reads its queue as it goes: dead-letter files of 10,000 and
/// of 40,000 records of 4 KiB each (43 and 172 MB) replayed through the
/// pipeline, which rejects every one again. The larger queue costs the
/// replay almost no more memory than the smaller one (it held the whole
/// queue, parsed and copied, before; and its writer the file it wrote back),
/// and every letter comes back once.
#[test]
fn a_replay_holds_a_batch_of_its_queue_not_the_queue() {
    let (small_queue, small_peak) = replay_peak(10_000);
    let (large_queue, large_peak) = replay_peak(40_000);
    let (queue, peak) = (
        large_queue - small_queue,
        large_peak.saturating_sub(small_peak),
    );
    eprintln!(
        "replaying {small_queue} and {large_queue} bytes of dead letters peaked at {small_peak} and {large_peak} bytes resident"
    );
    assert!(
        peak < queue / 8,
        "a queue larger by {queue} bytes cost the replay {peak} more bytes at its peak"
    );
}

/// Replays a dead-letter file of `letters` 4-KiB records that all fail
/// again; returns the file's size and the replay's peak resident bytes.
fn replay_peak(letters: usize) -> (u64, u64) {
    let ws = Workspace::generate(10, 0.0, 3);
    let dlq = ws.path("out/dlq");
    std::fs::create_dir_all(&dlq).unwrap();
    let mut text = String::new();
    for n in 0..letters {
        let letter = serde_json::json!({
            "time": "2026-12-03T00:00:00Z",
            "pipeline": "orders",
            "stage": "validate",
            "rule": "json",
            "reason": "not JSON",
            "source": format!("input/orders.ndjson:{}", n + 1),
            "position": n + 1,
            "original": format!("{n:08} {}", "x".repeat(4096)),
        });
        text.push_str(&letter.to_string());
        text.push('\n');
    }
    let queue = text.len() as u64;
    std::fs::write(dlq.join("orders.ndjson-000000000001.ndjson"), text).unwrap();
    // Batches of 4 MiB: a batch more or less in flight (the noise of a
    // resident peak) stays well under what holding the queue would cost.
    let pipeline = fixed_pipeline(&ws);
    let text = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(
        &pipeline,
        text.replace("  max_bytes: 16MiB\n", "  max_bytes: 4MiB\n"),
    )
    .unwrap();
    let summary = ws.path("replay.json");
    let mut replay = ws
        .command(&["dlq", "replay", "--pipeline", pipeline.to_str().unwrap()])
        .arg("--summary-json")
        .arg(&summary)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The high-water mark of resident memory, read until the process exits.
    let mut peak_kib = 0;
    let status = loop {
        if let Some(status) = replay.try_wait().unwrap() {
            break status;
        }
        peak_kib = peak_kib.max(peak_rss_kib(replay.id()));
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut replay.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "the replay failed: {stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
    assert_eq!(summary["totals"]["records_in"], letters as u64, "{summary}");
    assert_eq!(summary["totals"]["dlq"], letters as u64, "{summary}");
    let back = dead_letters(&dlq);
    assert_eq!(back.len(), letters);
    let distinct: BTreeSet<&str> = back
        .iter()
        .map(|l| &l["original"].as_str().unwrap()[..8])
        .collect();
    assert_eq!(distinct.len(), letters, "each letter comes back once");
    (queue, peak_kib * 1024)
}
