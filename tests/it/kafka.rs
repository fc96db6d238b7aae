//! Kafka in and out against a real broker process: exactly-once Parquet
//! across crashes, rebalances, scale-out and a broker restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tributary_engine::workload::{self, Expected, Workload, WorkloadSpec};

use crate::servers::{Broker, S3Server, serial};
use crate::support::*;

pub(crate) const TOPIC: &str = "orders";
pub(crate) const SEED: u64 = 7;

/// Consumer properties for a 6-s session with heartbeats every 500 ms: a
/// crashed member's partitions are handed over within seconds.
pub(crate) const SHORT_SESSION: [(&str, &str); 2] = [
    ("session.timeout.ms", "6000"),
    ("heartbeat.interval.ms", "500"),
];

/// Generated events published to a topic, with what must become of each.
pub(crate) struct Scenario {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) broker: Broker,
    /// Valid event ids.
    pub(crate) want_out: BTreeSet<String>,
    /// Review event ids.
    pub(crate) want_review: BTreeSet<String>,
    /// Invalid payloads → (expected rule, the keys of the records with these
    /// bytes: generators with other seeds repeat some invalid lines).
    pub(crate) want_dlq: BTreeMap<Vec<u8>, (&'static str, Vec<String>)>,
    partitions: i32,
}

impl Scenario {
    pub(crate) fn new(broker: Broker, events: u64, partitions: i32) -> Scenario {
        let mut scenario = Scenario {
            dir: tempfile::tempdir().unwrap(),
            broker,
            want_out: BTreeSet::new(),
            want_review: BTreeSet::new(),
            want_dlq: BTreeMap::new(),
            partitions,
        };
        scenario.publish(events, SEED);
        scenario
    }

    /// Publishes `events` generated events (seed `seed`) and adds them to what is expected.
    pub(crate) fn publish(&mut self, events: u64, seed: u64) {
        let customers = self.dir.path().join("customers.csv");
        let out = tributary(&[
            "generate",
            "--events",
            &events.to_string(),
            "--seed",
            &seed.to_string(),
            "--to-kafka",
            &self.broker.address(),
            "--topic",
            TOPIC,
            "--partitions",
            &self.partitions.to_string(),
            "--customers",
            customers.to_str().unwrap(),
            // tansu 0.6 answers a fetch from an offset inside a record batch with
            // the *next* batch, silently skipping the rest of the batch (see the
            // issue note). One record per batch keeps every offset a batch start,
            // so resuming anywhere (pause/resume, restarts, rebalances) is exact.
            "--kafka-property",
            "batch.num.messages=1",
        ]);
        assert!(
            out.status.success(),
            "publishing failed: {}",
            text(&out.stderr)
        );
        let spec = WorkloadSpec {
            workload: Workload::Orders,
            events,
            invalid_ratio: 0.02,
            seed,
        };
        for (n, (line, expected)) in workload::events(spec).enumerate() {
            match expected {
                Expected::Output { event_id } => {
                    assert!(self.want_out.insert(event_id));
                }
                Expected::Review { event_id, .. } => {
                    assert!(self.want_review.insert(event_id));
                }
                Expected::Dlq(class) => {
                    self.want_dlq
                        .entry(line)
                        .or_insert_with(|| (class.expected_rule(), Vec::new()))
                        .1
                        .push(n.to_string());
                }
            }
        }
    }

    /// How many invalid records were published.
    pub(crate) fn dlq_records(&self) -> usize {
        self.want_dlq.values().map(|(_, keys)| keys.len()).sum()
    }

    /// The headers of every message of `topic`, as text.
    pub(crate) fn topic_headers(&self, topic: &str) -> Vec<Vec<(String, String)>> {
        read_topic(&self.broker.address(), topic)
            .into_iter()
            .map(|r| {
                r.headers
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect()
            })
            .collect()
    }

    pub(crate) fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// A pipeline file: the shipped orders-kafka.yaml with `properties` added to the source.
    pub(crate) fn pipeline(&self, properties: &[(&str, &str)]) -> PathBuf {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/orders-kafka.yaml");
        let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/");
        let mut text = std::fs::read_to_string(shipped)
            .unwrap()
            .replace("../schemas/", schemas.to_str().unwrap());
        if !properties.is_empty() {
            let mut block = String::from("    properties:\n");
            for (k, v) in properties {
                block.push_str(&format!("      {k}: \"{v}\"\n"));
            }
            text = text.replace("\nbatch:", &format!("{block}\nbatch:"));
        }
        let path = self.dir.path().join("orders-kafka.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `tributary run` on the Kafka pipeline, configured through its variables.
    pub(crate) fn engine(&self, pipeline: &Path, group: &str, extra: &[&str]) -> Command {
        let mut cmd = self.command(group);
        cmd.arg("run").arg(pipeline).args(extra);
        cmd
    }

    /// `tributary` with the Kafka pipeline's variables set.
    pub(crate) fn command(&self, group: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tributary"));
        cmd.env("KAFKA_BROKERS", self.broker.address())
            .env("ORDERS_TOPIC", TOPIC)
            .env("TRIBUTARY_GROUP", group)
            .env("TRIBUTARY_OUT", self.out())
            .env("TRIBUTARY_CUSTOMERS", self.dir.path().join("customers.csv"))
            .env("TRIBUTARY_COMMIT_INTERVAL", "1s")
            .env("RUST_LOG", "warn");
        cmd
    }

    /// Runs one engine until the topic is drained; returns its JSON summary.
    pub(crate) fn run_to_end(&self, pipeline: &Path, group: &str) -> serde_json::Value {
        let summary = self.dir.path().join(format!("summary-{}.json", unique()));
        let out = self
            .engine(
                pipeline,
                group,
                &[
                    "--until-idle",
                    "3s",
                    "--summary-json",
                    summary.to_str().unwrap(),
                ],
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "engine failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap()
    }

    /// The output holds each valid event exactly once, and nothing else is visible.
    pub(crate) fn assert_exactly_once(&self) {
        let root = self.out().join("orders");
        let ids = parquet_strings(&root, "event_id");
        let set: BTreeSet<String> = ids.iter().cloned().collect();
        if ids.len() != set.len() {
            let mut seen = BTreeSet::new();
            let twice: Vec<&String> = ids.iter().filter(|id| !seen.insert(*id)).take(3).collect();
            let holders: Vec<String> = files_under(&root)
                .into_iter()
                .filter(|f| {
                    parquet_strings_in(&root.join(f), "event_id")
                        .iter()
                        .any(|id| twice.contains(&id))
                })
                .map(|f| f.display().to_string())
                .collect();
            let kept =
                std::env::temp_dir().join(format!("tributary-failed-{}", std::process::id()));
            let _ = Command::new("cp")
                .arg("-r")
                .arg(self.out())
                .arg(&kept)
                .status();
            panic!(
                "{} events were published twice, e.g. {twice:?} in {holders:?}; output copied to {}",
                ids.len() - set.len(),
                kept.display()
            );
        }
        let missing: Vec<_> = self.want_out.difference(&set).take(5).collect();
        let extra: Vec<_> = set.difference(&self.want_out).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "output differs: missing {missing:?}…, unexpected {extra:?}…"
        );
        let stray: Vec<_> = files_under(&root)
            .into_iter()
            .filter(|f| f.extension().is_none_or(|e| e != "parquet"))
            .collect();
        assert!(
            stray.is_empty(),
            "files other than published Parquet are visible: {stray:?}"
        );
    }

    /// Every invalid record is in the DLQ topic with its key and context headers (once each when `exact`).
    pub(crate) fn assert_dlq(&self, exact: bool) {
        self.assert_dlq_on(&self.broker.address(), exact);
    }

    /// [`assert_dlq`](Self::assert_dlq) for DLQ and review topics on `brokers`.
    pub(crate) fn assert_dlq_on(&self, brokers: &str, exact: bool) {
        let mut arrived = BTreeSet::new();
        let messages = read_topic_until(brokers, &format!("{TOPIC}.dlq"), |m| {
            if let Some(m) = m {
                arrived.insert(letter_payload(m));
            }
            arrived.len() >= self.want_dlq.len()
        });
        let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        for m in &messages {
            let payload = letter_payload(m);
            let (rule, keys) = self.want_dlq.get(&payload).unwrap_or_else(|| {
                let shown: String = text(&payload).chars().take(200).collect();
                panic!("unexpected DLQ record {shown:?}")
            });
            assert_eq!(m.header("tributary.errors.rule").as_deref(), Some(*rule));
            assert_eq!(
                m.header("tributary.errors.stage").as_deref(),
                Some("validate")
            );
            assert_eq!(
                m.header("tributary.errors.pipeline").as_deref(),
                Some("orders")
            );
            assert_eq!(m.header("tributary.errors.topic").as_deref(), Some(TOPIC));
            assert!(m.header("tributary.errors.partition").is_some());
            assert!(m.header("tributary.errors.offset").is_some());
            assert!(m.header("tributary.errors.time").is_some());
            assert!(
                !m.header("tributary.errors.reason")
                    .unwrap_or_default()
                    .is_empty()
            );
            let key = m.key.as_deref().map(String::from_utf8_lossy);
            assert!(
                key.as_ref()
                    .is_some_and(|k| keys.iter().any(|want| want == k)),
                "the original key is kept: {key:?} not in {keys:?}"
            );
            *seen.entry(payload).or_default() += 1;
        }
        assert_eq!(
            seen.len(),
            self.want_dlq.len(),
            "every invalid record reaches the DLQ"
        );
        if exact {
            for (payload, n) in &seen {
                assert_eq!(
                    *n,
                    self.want_dlq[payload].1.len(),
                    "a DLQ record was sent twice"
                );
            }
        }
        // Read on until every expected review letter has arrived, as for the
        // DLQ: an S3-backed broker can be quiet for longer than `read_topic`
        // waits (seen in a loaded run: 48 of 60 read, the rest still coming).
        let event_id = |m: &Record| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            v["event_id"].as_str().unwrap().to_string()
        };
        let mut arrived = BTreeSet::new();
        let review = read_topic_until(brokers, &format!("{TOPIC}.review"), |m| {
            if let Some(m) = m {
                arrived.insert(event_id(m));
            }
            arrived.len() >= self.want_review.len()
        });
        let ids: BTreeSet<String> = review.iter().map(event_id).collect();
        if ids != self.want_review {
            let missing: Vec<_> = self.want_review.difference(&ids).collect();
            panic!(
                "{} of {} review letters read; missing {missing:?}\n{}",
                ids.len(),
                self.want_review.len(),
                what_was_read(brokers, &format!("{TOPIC}.review"), &review)
            );
        }
    }

    /// The group's committed offsets equal the topic's end offsets.
    pub(crate) fn assert_committed_to_end(&self, group: &str) {
        let (committed, ends) = offsets(&self.broker.address(), group, self.partitions);
        assert_eq!(committed, ends, "committed offsets vs end offsets");
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn tributary(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .output()
        .expect("running tributary")
}

/// A message read back from a topic.
pub(crate) struct Record {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

fn client(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "20")
        .create()
        .expect("test consumer")
}

/// Every message of `topic`, read from the start of every partition to its end.
pub(crate) fn read_topic(brokers: &str, topic: &str) -> Vec<Record> {
    read_topic_until(brokers, topic, |_| true)
}

/// [`read_topic`], reading on (for up to two minutes) until `complete`,
/// asked first with no record and then with each one read, has said yes: a
/// broker slow to serve a partition after a restart is not taken for the
/// end of it.
pub(crate) fn read_topic_until(
    brokers: &str,
    topic: &str,
    mut complete: impl FnMut(Option<&Record>) -> bool,
) -> Vec<Record> {
    let consumer = client(brokers, &format!("reader-{}", unique()));
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Vec::new();
    };
    let mut tpl = TopicPartitionList::new();
    let mut remaining = BTreeMap::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .unwrap();
        if high > low {
            remaining.insert(p.id(), high);
        }
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    // tansu 0.6 reports the base offset of a partition's last record batch as
    // its high-water mark (not the offset after the last record), so read
    // past it until the partition has been quiet for a while.
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_since = Instant::now();
    let mut completed = complete(None);
    while !remaining.is_empty() || quiet_since.elapsed() < Duration::from_millis(1500) || !completed
    {
        if Instant::now() >= deadline {
            // What was read is returned for the caller to say what is missing.
            assert!(
                completed || remaining.is_empty(),
                "reading {topic} timed out"
            );
            break;
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        quiet_since = Instant::now();
        let m = message.expect("reading a message");
        if let Some(high) = remaining.get(&m.partition())
            && m.offset() + 1 >= *high
        {
            remaining.remove(&m.partition());
        }
        out.push(Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers: m.headers().map(header_pairs).unwrap_or_default(),
        });
        completed |= complete(out.last());
    }
    out
}

/// Per partition of `topic`: its watermarks now and the offsets of the
/// records read, for a failure message that tells a lost record from an
/// unread one.
fn what_was_read(brokers: &str, topic: &str, read: &[Record]) -> String {
    let consumer = client(brokers, &format!("reader-{}", unique()));
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in read {
        by_partition.entry(r.partition).or_default().push(r.offset);
    }
    let mut out = String::new();
    for (partition, offsets) in &mut by_partition {
        offsets.sort_unstable();
        let marks = consumer.fetch_watermarks(topic, *partition, Duration::from_secs(10));
        let gaps: Vec<_> = offsets
            .windows(2)
            .filter(|w| w[1] > w[0] + 1)
            .map(|w| (w[0], w[1]))
            .collect();
        out += &format!(
            "{topic}[{partition}]: watermarks {marks:?}, read {} (offsets {:?}..={:?}, gaps {gaps:?})\n",
            offsets.len(),
            offsets.first(),
            offsets.last()
        );
    }
    out
}

/// A message's headers, names read as bytes (rdkafka's accessor panics on a
/// name that is not UTF-8, and the poison-record test sends one).
#[allow(unsafe_code)] // reads header names rdkafka would panic on; see the SAFETY note.
fn header_pairs(headers: &rdkafka::message::BorrowedHeaders) -> Vec<(String, Vec<u8>)> {
    use rdkafka::bindings as rd;
    let native = std::ptr::from_ref(headers).cast::<rd::rd_kafka_headers_t>();
    (0..headers.count())
        .map(|idx| {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
            // SAFETY: the list is borrowed for this call; librdkafka returns
            // pointers into it: a NUL-terminated name and `size` value bytes.
            unsafe {
                let err =
                    rd::rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size);
                assert_eq!(err, rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
                let name = std::ffi::CStr::from_ptr(name)
                    .to_string_lossy()
                    .into_owned();
                let value = if value.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(value.cast::<u8>(), size).to_vec()
                };
                (name, value)
            }
        })
        .collect()
}

/// (committed offsets of `group`, end offsets) per partition of the orders topic.
/// End offsets are those of the last record read plus one: tansu 0.6 reports a
/// high-water mark below that (the last batch's base offset, and after a
/// restart on S3 storage an older value), see the issue note.
fn offsets(brokers: &str, group: &str, partitions: i32) -> (Vec<i64>, Vec<i64>) {
    let mut ends = vec![0; partitions as usize];
    for r in read_topic(brokers, TOPIC) {
        let end = &mut ends[r.partition as usize];
        *end = (*end).max(r.offset + 1);
    }
    let consumer = client(brokers, group);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_range(TOPIC, 0, partitions - 1);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let mut c = Vec::new();
    for p in 0..partitions {
        let offset = committed
            .find_partition(TOPIC, p)
            .map(|e| e.offset())
            .unwrap_or(Offset::Invalid);
        c.push(match offset {
            Offset::Offset(o) => o,
            _ => -1,
        });
    }
    (c, ends)
}

/// The record a dead letter carries. One over the topic's limit (1 MB by
/// default) is cut to fit and says where the whole record is: that copy.
fn letter_payload(m: &Record) -> Vec<u8> {
    let Some(truncated) = m.header("tributary.errors.truncated") else {
        return m.payload.clone();
    };
    let kept = truncated.rsplit("the whole record is at ").next().unwrap();
    let whole: serde_json::Value = serde_json::from_slice(&std::fs::read(kept).unwrap()).unwrap();
    let original = whole["original"].as_str().unwrap().as_bytes().to_vec();
    assert!(
        original.starts_with(&m.payload),
        "cut from the whole record"
    );
    original
}

/// Waits for a child to exit within `limit`; kills it and fails otherwise.
pub(crate) fn wait_exit(
    child: &mut Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    exit_within(child, limit).unwrap_or_else(|| panic!("{what} did not finish within {limit:?}"))
}

/// [`wait_exit`] for a child logging to `log`: a timeout shows the log's tail.
pub(crate) fn wait_exit_logged(
    child: &mut Child,
    limit: Duration,
    what: &str,
    log: &Path,
) -> std::process::ExitStatus {
    exit_within(child, limit).unwrap_or_else(|| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(300)..].join("\n");
        panic!("{what} did not finish within {limit:?}; the end of its log:\n{tail}")
    })
}

/// The child's exit status, or None after killing it once `limit` has passed.
fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Number of committed manifests so far (a sign of progress).
fn commits(out: &Path) -> usize {
    files_in_state(out, "commits")
}

fn files_in_state(out: &Path, kind: &str) -> usize {
    let dir = out.join("orders/_tributary").join(kind);
    let Ok(streams) = std::fs::read_dir(dir) else {
        return 0;
    };
    streams
        .filter_map(Result::ok)
        .map(|s| std::fs::read_dir(s.path()).map_or(0, |d| d.count()))
        .sum()
}

#[test]
fn kafka_to_parquet_exactly_once_with_dlq_topic_and_committed_offsets() {
    let _serial = serial();
    let scenario = Scenario::new(Broker::start(), 200_000, 6);
    let pipeline = scenario.pipeline(&[]);
    // Valid records also go to a downstream topic, as JSON.
    let text = std::fs::read_to_string(&pipeline).unwrap().replace(
        "\ndlq:",
        "  - kafka:\n      name: validated\n      topic: orders.validated\n\ndlq:",
    );
    std::fs::write(&pipeline, text).unwrap();
    let summary = scenario.run_to_end(&pipeline, "g1");

    scenario.assert_exactly_once();
    scenario.assert_dlq(true);
    scenario.assert_committed_to_end("g1");

    let totals = &summary["totals"];
    assert_eq!(totals["records_in"], 200_000);
    assert_eq!(totals["records_out"], scenario.want_out.len() as u64);
    assert_eq!(totals["dlq"], scenario.dlq_records() as u64);
    let processed = summary["kafka"]["partitions"].as_array().unwrap();
    assert_eq!(processed.len(), 6, "{summary}");
    for (partition, lag) in summary["kafka"]["lag"].as_object().unwrap() {
        assert_eq!(lag["lag"], 0, "{partition} is fully committed");
    }

    // The downstream topic holds each valid record once, as JSON, under its original key.
    let validated = read_topic(&scenario.broker.address(), "orders.validated");
    let mut ids = BTreeSet::new();
    for m in &validated {
        let record: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert!(ids.insert(record["event_id"].as_str().unwrap().to_string()));
        assert!(record["kafka_offset"].is_i64(), "{record}");
        assert!(m.key.is_some(), "keyed by the source record's key");
    }
    assert_eq!(ids, scenario.want_out);

    // Kafka metadata reached the output.
    let files = files_under(&scenario.out().join("orders"));
    let batch = &read_parquet(&scenario.out().join("orders").join(&files[0]))[0];
    assert!(batch.column_by_name("kafka_offset").is_some());

    // A second run of the same group finds nothing new and writes nothing.
    let again = scenario.run_to_end(&pipeline, "g1");
    assert_eq!(again["totals"]["records_in"], 0);
    scenario.assert_exactly_once();
}

#[test]
fn kill_9_at_any_moment_keeps_the_output_exactly_once() {
    let _serial = serial();
    let scenario = Scenario::new(Broker::start(), 200_000, 6);
    let pipeline = scenario.pipeline(&SHORT_SESSION);
    let group = "crashy";

    // Crash points reproduce the dangerous instants exactly; the process aborts
    // there with no cleanup, as under kill -9.
    for (point, nth) in [
        ("mid_upload", 2),
        ("before_manifest", 3),
        ("after_manifest", 4),
        ("after_publish", 5),
        ("after_group_commit", 3),
        // Inside recovery: the previous owner's files published, no claim yet.
        ("recover", 2),
    ] {
        let out = scenario
            .engine(&pipeline, group, &["--until-idle", "3s"])
            .env("TRIBUTARY_CRASH_AT", format!("{point}:{nth}"))
            // Short intervals: each run crashes after a little work, so
            // every point is reached while partitions still have some.
            .env("TRIBUTARY_COMMIT_INTERVAL", "200ms")
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "the engine should have crashed at {point}: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        assert!(text(&out.stderr).contains(&format!("crash point {point} reached")));
    }

    // kill -9 at arbitrary moments, after some progress each time.
    for delay_ms in [1_700u64, 2_900] {
        let before = commits(&scenario.out());
        let mut child = scenario
            .engine(&pipeline, group, &["--until-idle", "3s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let deadline = Instant::now() + Duration::from_secs(30);
        while commits(&scenario.out()) == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    // During a rebalance: a second member joins, and the first dies while giving up partitions.
    let mut first = scenario
        .engine(&pipeline, group, &["--until-idle", "20s"])
        .env("TRIBUTARY_CRASH_AT", "revoke")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let mut second = scenario
        .engine(&pipeline, group, &["--until-idle", "20s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut first, Duration::from_secs(120), "the first member");
    assert!(
        !status.success(),
        "the first member should have died during the rebalance"
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = second.kill();
    let _ = second.wait();

    // Finally a clean run to the end.
    scenario.run_to_end(&pipeline, group);
    scenario.assert_exactly_once();
    scenario.assert_dlq(false);
    scenario.assert_committed_to_end(group);
    assert_eq!(
        files_in_state(&scenario.out(), "staging"),
        0,
        "no staged leftovers"
    );
}

#[test]
fn three_instances_share_partitions_and_survive_losing_one() {
    let _serial = serial();
    let scenario = Scenario::new(Broker::start(), 200_000, 12);
    let pipeline = scenario.pipeline(&SHORT_SESSION);
    let group = "scale";
    let summaries: Vec<PathBuf> = (0..3)
        .map(|i| scenario.dir.path().join(format!("scale-{i}.json")))
        .collect();
    let mut members: Vec<Child> = summaries
        .iter()
        .map(|summary| {
            scenario
                .engine(
                    &pipeline,
                    group,
                    &[
                        "--until-idle",
                        "12s",
                        "--summary-json",
                        summary.to_str().unwrap(),
                    ],
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Kill one member once work is under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while commits(&scenario.out()) < 12 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    members[0].kill().unwrap();
    members[0].wait().unwrap();
    for (i, member) in members.iter_mut().enumerate().skip(1) {
        let status = wait_exit(member, Duration::from_secs(300), &format!("member {i}"));
        assert!(status.success(), "member {i} failed");
    }
    scenario.assert_exactly_once();
    scenario.assert_dlq(false);
    scenario.assert_committed_to_end(group);

    let mut processed = BTreeSet::new();
    for summary in &summaries[1..] {
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
        let partitions = summary["kafka"]["partitions"].as_array().unwrap();
        assert!(
            !partitions.is_empty(),
            "each survivor processed partitions: {summary}"
        );
        processed.extend(partitions.iter().map(|p| p.as_str().unwrap().to_string()));
    }
    let all: BTreeSet<String> = (0..12).map(|p| format!("{TOPIC}/{p}")).collect();
    assert_eq!(
        processed, all,
        "the survivors took over the killed member's partitions"
    );
}

#[test]
fn the_engine_rides_out_a_broker_restart() {
    let _serial = serial();
    let s3 = S3Server::start();
    s3.create_bucket("tansu");
    let endpoint = s3.endpoint();
    let env = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ];
    let broker = Broker::start_with("s3://tansu/", &env);
    let mut scenario = Scenario::new(broker, 3_000, 3);
    let pipeline = scenario.pipeline(&SHORT_SESSION);
    let summary = scenario.dir.path().join("restart.json");
    // Idle only well after the restart: the events published then take a
    // while to reach a broker that writes to S3 (the engine asks the brokers
    // for high-water marks before it stops, so stale statistics do not count).
    let mut engine = scenario
        .engine(
            &pipeline,
            "restart",
            &[
                "--until-idle",
                "30s",
                "--summary-json",
                summary.to_str().unwrap(),
            ],
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scenario.dir.path().join("engine.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while commits(&scenario.out()) < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    scenario.broker.stop();
    // `benches/outages.sh` keeps it down for six minutes, past every timeout.
    std::thread::sleep(Duration::from_secs(crate::delivery::outage_seconds(3)));
    scenario.broker.restart();
    // More events after the restart: the engine must reconnect to read them.
    scenario.publish(1_500, SEED + 1);
    let log_path = scenario.dir.path().join("engine.log");
    let status = wait_exit_logged(
        &mut engine,
        Duration::from_secs(300),
        "the engine",
        &log_path,
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        status.success(),
        "the engine failed across the broker restart:\n{log}"
    );
    if std::env::var_os("TRIBUTARY_TEST_VERBOSE").is_some() {
        eprintln!("{log}");
    }
    scenario.assert_exactly_once();
    let letters = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scenario.assert_dlq(false);
    }));
    if let Err(failed) = letters {
        let noted: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        eprintln!("the engine's warnings and errors:\n{}", noted.join("\n"));
        std::panic::resume_unwind(failed);
    }
    scenario.assert_committed_to_end("restart");
}
