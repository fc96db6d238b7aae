//! `tributary-bench`: end-to-end benchmarks of the `tributary` binary.
//!
//! Each measured run is a child process; its wall time, peak RSS and CPU
//! seconds come from the kernel's accounting of that child (`wait4`), so
//! nothing the bench itself does is counted.
//!
//! - `file`: NDJSON file → pipeline → Parquet.
//! - `kafka`: topic → pipeline → Parquet, beside a bare rdkafka consumer on the same topic.
//! - `consume`: the bare consumer (reads and counts, nothing else).
//! - `parse`: the parse-only reference, arrow-json alone.
//! - `latency`: event → visible in Parquet at a steady produce rate.

mod latency;
mod measure;
mod parse;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tributary_benches::{pipeline_file, repo_root};
use tributary_engine::workload::{self, Workload, WorkloadSpec};

use crate::measure::{Measured, run_measured};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// End-to-end benchmarks of the `tributary` binary.
#[derive(Debug, Parser)]
#[command(name = "tributary-bench")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// NDJSON file → pipeline → Parquet on local disk.
    File {
        #[command(flatten)]
        input: Input,
        /// The `tributary` binary (default: beside this one).
        #[arg(long)]
        tributary: Option<PathBuf>,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Kafka topic → pipeline → Parquet, and a bare consumer on the same topic for reference.
    Kafka {
        #[command(flatten)]
        input: Input,
        /// Bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Partitions of the topic.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Publish one record per produce batch (tansu 0.6 drops records fetched from inside a batch after a pause).
        #[arg(long)]
        one_record_batches: bool,
        /// The `tributary` binary (default: beside this one).
        #[arg(long)]
        tributary: Option<PathBuf>,
    },
    /// Reads a topic to its end with a bare rdkafka consumer and prints what it read.
    Consume {
        /// Bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// The topic.
        #[arg(long)]
        topic: String,
        /// Stop once nothing arrived for this long.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        idle: Duration,
    },
    /// Parses an NDJSON file into Arrow batches with arrow-json alone (the schema of the workload's pipeline).
    Parse {
        /// The file (every line must be valid JSON: generate it with --invalid-ratio 0).
        file: PathBuf,
        /// Which workload's schema.
        #[arg(long, default_value = "orders")]
        workload: Workload,
        /// Threads, each parsing its own share of the file.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Event → visible in Parquet, at a steady produce rate.
    Latency(latency::Options),
}

/// The input of a file or Kafka run.
#[derive(Debug, clap::Args)]
struct Input {
    /// Which events.
    #[arg(long, default_value = "orders")]
    workload: Workload,
    /// Number of events.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Fraction of invalid events.
    #[arg(long, default_value_t = 0.02)]
    invalid_ratio: f64,
    /// Working directory: inputs are generated here once and reused, output goes under it.
    #[arg(long, default_value = "/tmp/tributary-bench")]
    dir: PathBuf,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Bench::File {
            input,
            tributary,
            json,
        } => file(&input, &tributary_binary(tributary)?, json),
        Bench::Kafka {
            input,
            brokers,
            partitions,
            one_record_batches,
            tributary,
        } => kafka(
            &input,
            &brokers,
            partitions,
            one_record_batches,
            &tributary_binary(tributary)?,
        ),
        Bench::Consume {
            brokers,
            topic,
            idle,
        } => {
            let read = consume(&brokers, &topic, idle)?;
            println!(
                "{}",
                serde_json::json!({"records": read.records, "bytes": read.bytes, "seconds": read.active.as_secs_f64()})
            );
            Ok(())
        }
        Bench::Parse {
            file,
            workload,
            threads,
        } => parse::run(&file, workload, threads),
        Bench::Latency(options) => {
            latency::run(&options, &tributary_binary(options.tributary.clone())?)
        }
    }
}

/// `tributary` beside this binary unless given.
fn tributary_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    let path = match given {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .join("tributary"),
    };
    if !path.is_file() {
        bail!(
            "{}: no tributary binary; build it with `cargo build --release -p tributary-engine` or pass --tributary",
            path.display()
        );
    }
    Ok(path)
}

/// The generated input of `input` (written once, then reused) and its customers table.
fn generated(input: &Input) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(&input.dir)
        .with_context(|| format!("creating {}", input.dir.display()))?;
    let name = format!(
        "{:?}-{}-{}.ndjson",
        input.workload, input.events, input.invalid_ratio
    )
    .to_lowercase();
    let events = input.dir.join(name);
    let customers = input.dir.join("customers.csv");
    if !customers.is_file() {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&customers)?);
        workload::write_customers(42, &mut out)?;
        std::io::Write::flush(&mut out)?;
    }
    if !events.is_file() {
        eprintln!("generating {}", events.display());
        let partial = events.with_extension("partial");
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&partial)?);
        // Streamed: a bench holding the expectations of 10M events (~0.9 GB)
        // would hand that to the measured child, whose peak RSS (ru_maxrss)
        // counts its address space from before exec.
        workload::stream_events(
            WorkloadSpec {
                workload: input.workload,
                events: input.events,
                invalid_ratio: input.invalid_ratio,
                seed: 42,
            },
            &mut out,
            |_| {},
        )?;
        std::io::Write::flush(&mut out)?;
        std::fs::rename(&partial, &events)?;
    }
    Ok((events, customers))
}

/// Runs the workload's pipeline over its generated file.
fn file(input: &Input, tributary: &Path, json: bool) -> Result<()> {
    let (events, customers) = generated(input)?;
    let bytes = std::fs::metadata(&events)?.len();
    let out = input.dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    let summary_file = input.dir.join("summary.json");
    let mut command = Command::new(tributary);
    command
        .arg("run")
        .arg(pipeline_file(input.workload))
        .arg("--summary-json")
        .arg(&summary_file)
        .env("TRIBUTARY_INPUT", &events)
        .env("TRIBUTARY_CUSTOMERS", &customers)
        .env("TRIBUTARY_OUT", &out)
        .env("RUST_LOG", "warn");
    let measured = run_measured(&mut command)?;
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_file)?)?;
    let totals = &summary["totals"];
    let records = totals["records_in"].as_u64().unwrap_or(0);
    if records != input.events {
        bail!("the run read {records} records of {}", input.events);
    }
    let result = serde_json::json!({
        "engine": "tributary",
        "workload": format!("{:?}", input.workload).to_lowercase(),
        "events": records,
        "input_bytes": bytes,
        "wall_s": measured.wall.as_secs_f64(),
        "events_per_s": records as f64 / measured.wall.as_secs_f64(),
        "input_mb_per_s": bytes as f64 / 1e6 / measured.wall.as_secs_f64(),
        "peak_rss_mib": measured.peak_rss_mib(),
        "user_s": measured.user.as_secs_f64(),
        "sys_s": measured.system.as_secs_f64(),
        "out": totals["records_out"],
        "dlq": totals["dlq"],
        "review": totals["review"],
    });
    if json {
        println!("{result}");
    } else {
        print_row(
            &format!("file → Parquet, {:?}", input.workload),
            records,
            bytes,
            &measured,
        );
        println!(
            "  out {} · dlq {} · review {}",
            totals["records_out"], totals["dlq"], totals["review"]
        );
    }
    Ok(())
}

fn print_row(what: &str, records: u64, bytes: u64, m: &Measured) {
    let secs = m.wall.as_secs_f64();
    println!(
        "{what}: {records} events, {:.0} MB in {secs:.2} s = {:.0} events/s, {:.0} MB/s; peak RSS {:.0} MiB; CPU {:.2} user + {:.2} sys s",
        bytes as f64 / 1e6,
        records as f64 / secs,
        bytes as f64 / 1e6 / secs,
        m.peak_rss_mib(),
        m.user.as_secs_f64(),
        m.system.as_secs_f64(),
    );
}

/// What a consumer read.
struct Read {
    records: u64,
    bytes: u64,
    /// From subscribing to the last record.
    active: Duration,
}

/// A bare consumer: subscribe, poll, count; nothing else.
fn consume(brokers: &str, topic: &str, idle: Duration) -> Result<Read> {
    let group = format!(
        "bare-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // The engine's fetch settings (connectors/src/kafka/consumer.rs), so
        // the two read under the same broker conditions.
        .set("fetch.wait.max.ms", "20")
        .set("fetch.queue.backoff.ms", "10")
        .set("queued.max.messages.kbytes", "16384")
        .create()?;
    consumer.subscribe(&[topic])?;
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut last = Instant::now();
    let mut active = Duration::ZERO;
    while last.elapsed() < idle || records == 0 && started.elapsed() < Duration::from_secs(60) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                records += 1;
                bytes += message.payload_len() as u64;
                last = Instant::now();
                active = started.elapsed();
            }
            Some(Err(e)) => bail!("consuming {topic}: {e}"),
            None => {}
        }
    }
    Ok(Read {
        records,
        bytes,
        active,
    })
}

/// Publishes the workload to a fresh topic, then reads it with the bare consumer and with the pipeline.
fn kafka(
    input: &Input,
    brokers: &str,
    partitions: i32,
    one_record_batches: bool,
    tributary: &Path,
) -> Result<()> {
    if input.workload != Workload::Orders {
        bail!("the Kafka bench runs the orders workload (pipelines/orders-kafka.yaml)");
    }
    let (_, customers) = generated(input)?;
    let topic = format!(
        "bench-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    );
    let mut publish = Command::new(tributary);
    publish
        .args(["generate", "--events", &input.events.to_string()])
        .args(["--invalid-ratio", &input.invalid_ratio.to_string()])
        .args(["--to-kafka", brokers, "--topic", &topic])
        .args(["--partitions", &partitions.to_string()]);
    if one_record_batches {
        publish.args(["--kafka-property", "batch.num.messages=1"]);
    }
    let publish = publish.status()?;
    if !publish.success() {
        bail!("publishing to {topic} failed");
    }

    let idle = Duration::from_secs(3);
    let mut bare = Command::new(std::env::current_exe()?);
    bare.args([
        "consume",
        "--brokers",
        brokers,
        "--topic",
        &topic,
        "--idle",
        "3s",
    ]);
    let bare_run = run_measured(&mut bare)?;
    let bare_read: serde_json::Value = serde_json::from_slice(&bare_run.stdout)?;
    let bare_records = bare_read["records"].as_u64().unwrap_or(0);
    let bare_bytes = bare_read["bytes"].as_u64().unwrap_or(0);
    let bare_secs = bare_run.wall.saturating_sub(idle).as_secs_f64();

    let out = input.dir.join("out-kafka");
    let _ = std::fs::remove_dir_all(&out);
    let summary_file = input.dir.join("summary-kafka.json");
    let mut engine = Command::new(tributary);
    engine
        .arg("run")
        .arg(repo_root().join("pipelines/orders-kafka.yaml"))
        .args(["--until-idle", "3s", "--summary-json"])
        .arg(&summary_file)
        .env("KAFKA_BROKERS", brokers)
        .env("ORDERS_TOPIC", &topic)
        .env("TRIBUTARY_GROUP", format!("{topic}-engine"))
        .env("TRIBUTARY_CUSTOMERS", &customers)
        .env("TRIBUTARY_OUT", &out)
        .env("RUST_LOG", "warn");
    let engine_run = run_measured(&mut engine)?;
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_file)?)?;
    let engine_records = summary["totals"]["records_in"].as_u64().unwrap_or(0);
    let engine_secs = engine_run.wall.saturating_sub(idle).as_secs_f64();

    println!(
        "topic {topic}: {} events published, {partitions} partitions (rates exclude the 3 s idle tail)",
        input.events
    );
    let bare_rate = bare_records as f64 / bare_secs;
    let engine_rate = engine_records as f64 / engine_secs;
    println!(
        "bare rdkafka consumer: {bare_records} records, {:.0} MB in {bare_secs:.2} s = {bare_rate:.0} records/s; peak RSS {:.0} MiB; CPU {:.2} + {:.2} s",
        bare_bytes as f64 / 1e6,
        bare_run.peak_rss_mib(),
        bare_run.user.as_secs_f64(),
        bare_run.system.as_secs_f64()
    );
    println!(
        "tributary (orders-kafka.yaml): {engine_records} records in {engine_secs:.2} s = {engine_rate:.0} records/s ({:.0} % of bare); peak RSS {:.0} MiB; CPU {:.2} + {:.2} s",
        100.0 * engine_rate / bare_rate,
        engine_run.peak_rss_mib(),
        engine_run.user.as_secs_f64(),
        engine_run.system.as_secs_f64()
    );
    Ok(())
}
