//! Enrichment from live sources: PostgreSQL (snapshot and on demand) and
//! Redis lookups against the machine's servers, a lookup source going down
//! (records follow `on_error`), and `CacheInvalidated` events.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tributary_engine::workload::{self, Expected, Workload, WorkloadSpec};

use crate::kafka::Scenario;
use crate::servers::{Broker, Outage, free_port, serial};
use crate::support::*;

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Runs SQL with psql against the machine's PostgreSQL.
fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([POSTGRES, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql failed (is PostgreSQL up on 127.0.0.1:5432?): {}",
        text(&out.stderr)
    );
}

/// A name no other test run uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// The customers CSV as a PostgreSQL table (dropped when the test ends).
struct CustomersTable(String);

impl CustomersTable {
    fn load(csv: &Path) -> CustomersTable {
        let name = unique("tributary_customers");
        psql(&format!(
            "CREATE TABLE {name} (customer_id text PRIMARY KEY, segment text, region text, signup_date date)"
        ));
        let out = Command::new("psql")
            .args([
                POSTGRES,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("\\copy {name} FROM '{}' CSV HEADER", csv.display()),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        CustomersTable(name)
    }
}

impl Drop for CustomersTable {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                POSTGRES,
                "-q",
                "-c",
                &format!("DROP TABLE IF EXISTS {}", self.0),
            ])
            .output();
    }
}

/// The customers CSV as Redis hashes `<prefix><customer_id>`.
fn load_redis(csv: &Path, prefix: &str, port: u16) {
    redis_cli(csv, port, |f| {
        format!("HSET {prefix}{} segment {} region {}", f[0], f[1], f[2])
    });
}

/// The customers CSV as Redis strings `<prefix><customer_id>` holding a JSON object.
fn load_redis_json(csv: &Path, prefix: &str, port: u16) {
    redis_cli(csv, port, |f| {
        let document = serde_json::json!({ "segment": f[1], "region": f[2], "since": f[3] });
        // redis-cli takes a double-quoted argument with backslash escapes.
        let quoted = document
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        format!("SET {prefix}{} \"{quoted}\"", f[0])
    });
}

/// Runs one redis-cli command per customer row.
fn redis_cli(csv: &Path, port: u16, command: impl Fn(&[&str]) -> String) {
    let mut commands = String::new();
    for line in std::fs::read_to_string(csv).unwrap().lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        commands.push_str(&command(&f));
        commands.push('\n');
    }
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-cli runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "redis-cli failed (is Redis up on 127.0.0.1:6379?)"
    );
}

/// `pipeline` with its file lookup replaced by `lookup` (YAML lines at the lookup's indentation).
fn with_lookup(pipeline: &Path, lookup: &str, out: &Path) -> std::path::PathBuf {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/");
    let text = std::fs::read_to_string(pipeline).unwrap().replace(
        "schema: ../schemas/",
        &format!("schema: {}", schemas.display()),
    );
    let (before, rest) = text
        .split_once("        path: ${TRIBUTARY_CUSTOMERS")
        .unwrap();
    let (_, after) = rest.split_once('\n').unwrap();
    let text = format!("{before}{lookup}{after}");
    std::fs::write(out, &text).unwrap();
    out.to_path_buf()
}

/// event_id → (segment, region) of every output row under `dir`.
fn enrichment(dir: &Path) -> BTreeMap<String, (String, String)> {
    let ids = parquet_strings(dir, "event_id");
    let segments = parquet_strings(dir, "segment");
    let regions = parquet_strings(dir, "region");
    ids.into_iter()
        .zip(segments.into_iter().zip(regions))
        .collect()
}

#[test]
fn postgres_and_redis_lookups_enrich_like_the_file_they_were_loaded_from() {
    let ws = Workspace::generate(4_000, 0.02, 21);
    let csv = ws.path("input/customers.csv");
    let baseline = ws.run_orders();
    let want = enrichment(&ws.path("out/orders"));
    assert!(!want.is_empty());
    let table = CustomersTable::load(&csv);
    let prefix = unique("tributary:customer") + ":";
    load_redis(&csv, &prefix, 6379);
    let json_prefix = unique("tributary:customer-json") + ":";
    load_redis_json(&csv, &json_prefix, 6379);

    let variants = [
        (
            "postgres-snapshot",
            format!(
                "        postgres:\n          url: {POSTGRES}\n          table: {}\n",
                table.0
            ),
        ),
        (
            "postgres-on-demand",
            format!(
                "        postgres:\n          url: {POSTGRES}\n          query: SELECT customer_id, segment, region FROM {}\n          mode: on_demand\n          cache: {{ max_entries: 500, ttl: 10m }}\n",
                table.0
            ),
        ),
        (
            "redis",
            format!(
                "        redis:\n          url: redis://127.0.0.1:6379\n          key_prefix: \"{prefix}\"\n          fields: {{ segment: string, region: string }}\n"
            ),
        ),
        (
            "redis-json",
            format!(
                "        redis:\n          url: redis://127.0.0.1:6379\n          key_prefix: \"{json_prefix}\"\n          value: json\n          fields: {{ segment: string, region: string }}\n"
            ),
        ),
    ];
    for (name, lookup) in variants {
        let pipeline = with_lookup(
            &orders_pipeline(),
            &lookup,
            &ws.path(&format!("{name}.yaml")),
        );
        let out = ws.path(&format!("out-{name}"));
        let summary_path = ws.path(&format!("{name}.json"));
        let run = ws
            .command(&[
                "run",
                pipeline.to_str().unwrap(),
                "--summary-json",
                summary_path.to_str().unwrap(),
            ])
            .env("TRIBUTARY_OUT", &out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{name}: {}\n{}",
            text(&run.stdout),
            text(&run.stderr)
        );
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(summary_path).unwrap()).unwrap();
        assert_eq!(summary["totals"], baseline["totals"], "{name}");
        assert_eq!(enrichment(&out.join("orders")), want, "{name}");
    }
}

#[test]
fn a_lookup_source_that_is_down_sends_records_to_review_until_it_is_back() {
    let _serial = serial();
    let mut redis = Outage::proxy(6379);
    let broker = Broker::start();
    let mut scenario = Scenario::new(broker, 0, 2);
    let csv = scenario.dir.path().join("customers.csv");
    let prefix = unique("tributary:outage") + ":";
    let lookup = format!(
        "        redis:\n          url: redis://127.0.0.1:{}\n          key_prefix: \"{prefix}\"\n          fields: {{ segment: string, region: string }}\n          cache: {{ ttl: 10m, retry_for: 500ms }}\n",
        redis.port
    );
    let pipeline = with_lookup(
        &scenario.pipeline(&[]),
        &lookup,
        &scenario.dir.path().join("redis.yaml"),
    );
    let (mut engine, port) = start_ready(&scenario, &pipeline, "outage");
    assert!(csv.exists());
    load_redis(&csv, &prefix, 6379);

    // Redis down: after retrying for 500 ms, valid records go to review, saying why.
    redis.take_down();
    scenario.publish(1_000, 31);
    let first_valid = scenario.want_out.clone();
    wait_until(Duration::from_secs(90), || records_in(port) >= 1_000);
    // Back: the next records are enriched.
    redis.bring_up();
    let before = scenario.want_out.clone();
    scenario.publish(1_000, 32);
    let second_valid: BTreeSet<String> = scenario.want_out.difference(&before).cloned().collect();
    wait_until(Duration::from_secs(90), || records_in(port) >= 2_000);
    stop(engine.id());
    assert!(engine.wait().unwrap().success());

    let out = enrichment(&scenario.out().join("orders"));
    let out_ids: BTreeSet<String> = out.keys().cloned().collect();
    assert!(
        first_valid.is_disjoint(&out_ids),
        "records enriched while Redis was down"
    );
    assert_eq!(out_ids, second_valid, "records after Redis came back");
    let review = review_letters(&scenario);
    let errors: Vec<&serde_json::Value> = review
        .iter()
        .filter(|l| l["tributary.errors.rule"] == "customers:error")
        .collect();
    assert!(
        errors.len() >= first_valid.len(),
        "{} lookup errors in review for {} valid records",
        errors.len(),
        first_valid.len()
    );
    assert!(
        errors[0]["tributary.errors.reason"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{}",
        errors[0]
    );
}

#[test]
fn an_invalidation_event_refreshes_one_cached_key_at_once() {
    invalidation_applies_at_once(false);
}

#[test]
fn an_invalidation_event_reloads_a_snapshot_table_at_once() {
    invalidation_applies_at_once(true);
}

/// Customers x and y change in the database; only x's change is announced.
/// An on-demand cache drops x alone (y's cached row holds for the TTL); a
/// snapshot table reloads whole (y's change arrives too), not at its 5-minute
/// interval.
fn invalidation_applies_at_once(snapshot: bool) {
    let _serial = serial();
    let broker = Broker::start();
    let mut scenario = Scenario::new(broker, 0, 2);
    let csv = scenario.dir.path().join("customers.csv");
    assert!(csv.exists());
    let table = CustomersTable::load(&csv);
    let topic = unique("cache_invalidations");
    let created = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "generate",
            "--events",
            "0",
            "--to-kafka",
            &scenario.broker.address(),
            "--topic",
            &topic,
            "--partitions",
            "1",
        ])
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", text(&created.stderr));
    let lookup = if snapshot {
        format!(
            "        name: customers\n        postgres:\n          url: {POSTGRES}\n          table: {}\n        invalidate:\n          topic: {topic}\n",
            table.0
        )
    } else {
        format!(
            "        name: customers\n        postgres:\n          url: {POSTGRES}\n          table: {}\n          mode: on_demand\n          cache: {{ ttl: 1h }}\n        invalidate:\n          topic: {topic}\n",
            table.0
        )
    };
    let pipeline = with_lookup(
        &scenario.pipeline(&[]),
        &lookup.replace("        name: customers\n", ""),
        &scenario.dir.path().join("pg.yaml"),
    );
    let (mut engine, port) = start_ready(&scenario, &pipeline, "invalidate");

    // Two customers that order in both rounds.
    let customers = |seed: u64| -> BTreeMap<String, String> {
        let spec = WorkloadSpec {
            workload: Workload::Orders,
            events: 1_000,
            invalid_ratio: 0.02,
            seed,
        };
        workload::events(spec)
            .filter(|(_, e)| matches!(e, Expected::Output { .. }))
            .map(|(line, e)| {
                let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
                let Expected::Output { event_id } = e else {
                    unreachable!()
                };
                (event_id, v["customer_id"].as_str().unwrap().to_string())
            })
            .collect()
    };
    let (round1, round2) = (customers(41), customers(42));
    let both: Vec<String> = round1
        .values()
        .collect::<BTreeSet<_>>()
        .intersection(&round2.values().collect())
        .map(|c| c.to_string())
        .collect();
    let (x, y) = (&both[0], &both[1]);

    scenario.publish(1_000, 41);
    wait_until(Duration::from_secs(90), || records_in(port) >= 1_000);
    // Both change in the database; only x's change is announced.
    psql(&format!(
        "UPDATE {} SET segment = 'platinum' WHERE customer_id IN ('{x}', '{y}')",
        table.0
    ));
    publish(
        &scenario.broker.address(),
        &topic,
        &format!(r#"{{"cache":"customers","key":"{x}"}}"#),
    );
    let applied = if snapshot {
        r#"tributary_lookup_reloads_total{lookup="customers",why="invalidated",outcome="ok"} 1"#
    } else {
        r#"tributary_cache_invalidations_total{lookup="customers"} 1"#
    };
    wait_until(Duration::from_secs(30), || {
        get(port, "/metrics").is_some_and(|(_, m)| m.contains(applied))
    });
    scenario.publish(1_000, 42);
    wait_until(Duration::from_secs(90), || records_in(port) >= 2_000);
    stop(engine.id());
    assert!(engine.wait().unwrap().success());

    let out = enrichment(&scenario.out().join("orders"));
    for (event, customer) in &round2 {
        let segment = &out[event].0;
        if customer == x {
            assert_eq!(
                segment, "platinum",
                "x was invalidated: the new segment applies at once"
            );
        } else if customer == y && snapshot {
            assert_eq!(
                segment, "platinum",
                "the snapshot reloaded whole: y's new segment applies too"
            );
        } else if customer == y {
            assert_ne!(
                segment, "platinum",
                "y was not invalidated: its cached segment holds for the TTL"
            );
        }
    }
    for (event, customer) in &round1 {
        if customer == x {
            assert_ne!(&out[event].0, "platinum");
        }
    }
}

/// Starts the engine on `pipeline` with its HTTP port open; returns once it is ready.
fn start_ready(scenario: &Scenario, pipeline: &Path, group: &str) -> (std::process::Child, u16) {
    let port = free_port();
    let engine = scenario
        .engine(pipeline, group, &["--http", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), || {
        get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    (engine, port)
}

fn publish(brokers: &str, topic: &str, payload: &str) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    producer
        .send(BaseRecord::<(), str>::to(topic).payload(payload))
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Review records of the scenario's review topic, as JSON objects of their headers.
fn review_letters(scenario: &Scenario) -> Vec<serde_json::Value> {
    scenario
        .topic_headers("orders.review")
        .into_iter()
        .map(|headers| {
            serde_json::Value::Object(headers.into_iter().map(|(k, v)| (k, v.into())).collect())
        })
        .collect()
}

fn stop(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

fn records_in(port: u16) -> u64 {
    get(port, "/metrics")
        .map(|(_, m)| {
            m.lines()
                .filter(|l| {
                    l.starts_with("tributary_records_total{")
                        && l.contains(r#"stage="validate""#)
                        && l.contains(r#"outcome="in""#)
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

use crate::telemetry::get;

/// Learning where a pipeline's outputs and queues live needs no lookup
/// database: `query`, `dlq inspect --pipeline` and `check --offline` work
/// with PostgreSQL and Redis unreachable, while `check` (which connects)
/// names the lookup that cannot be reached.
#[test]
fn query_inspect_and_offline_check_need_no_lookup_database() {
    let ws = Workspace::generate(2_000, 0.05, 33);
    let baseline = ws.run_orders();
    let records_out = baseline["totals"]["records_out"].as_u64().unwrap();
    let dlq = baseline["totals"]["dlq"].as_u64().unwrap();
    assert!(records_out > 0 && dlq > 0, "{baseline}");
    let closed = free_port();
    let variants = [
        (
            "postgres",
            format!(
                "        postgres:\n          url: postgres://postgres@127.0.0.1:{closed}/test\n          table: customers\n"
            ),
        ),
        (
            "redis",
            format!(
                "        redis:\n          url: redis://127.0.0.1:{closed}\n          key_prefix: \"customer:\"\n          fields: {{ segment: string, region: string }}\n"
            ),
        ),
    ];
    for (name, lookup) in variants {
        let pipeline = with_lookup(
            &orders_pipeline(),
            &lookup,
            &ws.path(&format!("{name}.yaml")),
        );
        let pipeline = pipeline.to_str().unwrap();

        let query = ws.tributary(&[
            "query",
            "--pipeline",
            pipeline,
            "SELECT COUNT(*) AS n, COUNT(DISTINCT event_date) AS days FROM orders",
        ]);
        let shown = text(&query.stdout);
        assert!(
            query.status.success(),
            "{name}: query: {}",
            text(&query.stderr)
        );
        assert!(
            shown.contains(&format!("| {records_out} ")),
            "{name}: {records_out} rows expected:\n{shown}"
        );

        let inspect = ws.tributary(&["dlq", "inspect", "--pipeline", pipeline, "--json"]);
        assert!(
            inspect.status.success(),
            "{name}: inspect: {}",
            text(&inspect.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(report["records"], dlq, "{name}: {report}");

        let offline = ws.tributary(&["check", "--offline", pipeline]);
        assert!(
            offline.status.success(),
            "{name}: check --offline: {}",
            text(&offline.stderr)
        );

        let online = ws.tributary(&["check", pipeline]);
        let refused = text(&online.stderr);
        assert!(
            !online.status.success(),
            "{name}: check connected to a closed port"
        );
        assert!(
            refused.contains(&format!("stages[2].enrich.lookup.{name}")),
            "{name}: {refused}"
        );
    }
}
