//! Event → visible in Parquet: a producer publishes orders at a steady rate,
//! each message stamped with its send time; the engine runs
//! `benches/pipelines/orders-latency.yaml` (5 s roll, 5 s commits); a
//! watcher notes when each Parquet file appears under its final name and
//! reads the Kafka timestamps in it. Latency = appearance − send time, for
//! events sent after the warm-up.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, TimestampMillisecondArray};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tributary_benches::repo_root;
use tributary_engine::workload::{self, Workload, WorkloadSpec};

/// Options of the latency bench.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Events per second to publish.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// How long to publish, in seconds (the warm-up included).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Events sent in the first seconds are not measured.
    #[arg(long, default_value_t = 15)]
    warmup: u64,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Working directory.
    #[arg(long, default_value = "/tmp/tributary-bench/latency")]
    dir: PathBuf,
    /// The `tributary` binary (default: beside this one).
    #[arg(long)]
    pub tributary: Option<PathBuf>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs the bench and prints the percentiles.
pub fn run(options: &Options, tributary: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(&options.dir);
    std::fs::create_dir_all(&options.dir)?;
    let customers = options.dir.join("customers.csv");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&customers)?);
    workload::write_customers(42, &mut out)?;
    std::io::Write::flush(&mut out)?;
    drop(out);

    let topic = format!("latency-{}", now_ms());
    let created = Command::new(tributary)
        .args(["generate", "--events", "0", "--to-kafka", &options.brokers])
        .args([
            "--topic",
            &topic,
            "--partitions",
            &options.partitions.to_string(),
        ])
        .status()?;
    if !created.success() {
        bail!("creating topic {topic} failed");
    }
    let output = options.dir.join("out");
    let log = std::fs::File::create(options.dir.join("engine.log"))?;
    let mut engine = Command::new(tributary)
        .arg("run")
        .arg(repo_root().join("benches/pipelines/orders-latency.yaml"))
        .env("KAFKA_BROKERS", &options.brokers)
        .env("ORDERS_TOPIC", &topic)
        .env("TRIBUTARY_GROUP", format!("{topic}-engine"))
        .env("TRIBUTARY_CUSTOMERS", &customers)
        .env("TRIBUTARY_OUT", &output)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let result = measure(options, &topic, &output.join("orders"), &mut engine);
    // SAFETY: the engine is our child; SIGINT asks it to drain and stop.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(engine.id() as libc::pid_t, libc::SIGINT)
    };
    let _ = engine.wait();
    result
}

fn measure(options: &Options, topic: &str, output: &Path, engine: &mut Child) -> Result<()> {
    let started_ms = now_ms();
    let warm_ms = started_ms + options.warmup as i64 * 1000;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, brokers, topic) = (stop.clone(), options.brokers.clone(), topic.to_string());
        let (rate, seconds) = (options.rate, options.seconds);
        std::thread::spawn(move || {
            produce(&brokers, &topic, rate, Duration::from_secs(seconds), &stop)
        })
    };

    let mut seen = HashSet::new();
    let mut latencies: Vec<u32> = Vec::new();
    let mut last_new = Instant::now();
    let mut produced_until = None;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(status) = engine.try_wait()? {
            stop.store(true, Ordering::Relaxed);
            bail!(
                "the engine exited early ({status}); see {}",
                options.dir.join("engine.log").display()
            );
        }
        let visible_ms = now_ms();
        for file in parquet_files(output)? {
            if seen.insert(file.clone()) {
                last_new = Instant::now();
                for ts in timestamps(&file)? {
                    if ts >= warm_ms && produced_until.is_none_or(|end| ts <= end) {
                        latencies.push((visible_ms - ts).max(0) as u32);
                    }
                }
            }
        }
        if produced_until.is_none() && producer.is_finished() {
            produced_until = Some(now_ms());
        }
        // Done when the producer is, and no file appeared for two rolls.
        if produced_until.is_some() && last_new.elapsed() > Duration::from_secs(12) {
            break;
        }
    }
    let producer_result = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the producer panicked"))?;
    let sent_total = producer_result?;
    let send_secs = options.seconds as f64;
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i] as f64 / 1000.0
    };
    println!(
        "latency at {:.0} events/s for {} s (warm-up {} s, {} partitions, 5 s roll, 5 s commits): {} events sent, {} measured",
        sent_total as f64 / send_secs,
        options.seconds,
        options.warmup,
        options.partitions,
        sent_total,
        latencies.len()
    );
    println!(
        "event → visible in Parquet: p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

/// Publishes clean orders at `rate` for `duration`, stamping each with its send time; returns how many.
fn produce(
    brokers: &str,
    topic: &str,
    rate: u64,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<u64> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut generator = workload::Generator::new(WorkloadSpec {
        workload: Workload::Orders,
        events: u64::MAX,
        invalid_ratio: 0.0,
        seed: 7,
    });
    let started = Instant::now();
    let mut n = 0u64;
    let mut line = Vec::with_capacity(1024);
    let mut key = String::new();
    while started.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while n < due {
            line.clear();
            generator.next_line(&mut line);
            key.clear();
            std::fmt::Write::write_fmt(&mut key, format_args!("{n}"))?;
            let mut record = BaseRecord::to(topic)
                .payload(&line)
                .key(&key)
                .timestamp(now_ms());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, back))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                    {
                        producer.poll(Duration::from_millis(1));
                        record = back;
                    }
                    Err((e, _)) => return Err(e).context("producing"),
                }
            }
            n += 1;
        }
        producer.poll(Duration::from_millis(2));
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(n)
}

/// Every Parquet file under `dir` by its final name (the staging area left out).
fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n == "_tributary") {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// The `kafka_timestamp` values (ms) in a published file.
fn timestamps(file: &Path) -> Result<Vec<i64>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file)?)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["kafka_timestamp"]);
    let mut values = Vec::new();
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        let column = batch
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .with_context(|| {
                format!(
                    "{}: kafka_timestamp is not a millisecond timestamp",
                    file.display()
                )
            })?;
        values.extend(column.iter().flatten());
    }
    Ok(values)
}
