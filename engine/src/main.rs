//! The `tributary` command line.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tributary_engine::runtime::{self, StopHandle, Summary};
use tributary_engine::workload::{self, Workload, WorkloadSpec};
use tributary_engine::{config, plan, query, telemetry};

#[global_allocator]
static GLOBAL: telemetry::heap::CountingAllocator<mimalloc::MiMalloc> =
    telemetry::heap::CountingAllocator(mimalloc::MiMalloc);

/// Tributary: validate, transform and enrich JSON events into Parquet.
#[derive(Debug, Parser)]
#[command(name = "tributary", version, about)]
struct Cli {
    /// How log lines are written to standard error: `text` for people, `json` (one object per line) for collectors.
    #[arg(
        long,
        global = true,
        env = "TRIBUTARY_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Export traces (a span per batch and per stage) to this OpenTelemetry collector over OTLP/HTTP.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable, colored on a terminal.
    Text,
    /// One JSON object per line, with the event's fields and its spans.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate order events, run the bundled orders pipeline on them, and show the result.
    Demo {
        /// Number of events.
        #[arg(long, default_value_t = 300_000)]
        events: u64,
        /// Folder for input and output (replaced on every run).
        #[arg(long, default_value = "tributary-demo")]
        dir: PathBuf,
    },
    /// Run a pipeline until its source is exhausted (Ctrl-C drains and stops).
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Also write the summary as JSON to this file.
        #[arg(long)]
        summary_json: Option<PathBuf>,
        /// Kafka sources: stop once every assigned partition is caught up and nothing arrived for this long (e.g. `5s`).
        #[arg(long, value_parser = humantime::parse_duration)]
        until_idle: Option<std::time::Duration>,
        /// Serve /metrics (Prometheus), /healthz and /readyz on this address (e.g. `0.0.0.0:9898`).
        #[arg(long, env = "TRIBUTARY_HTTP")]
        http: Option<std::net::SocketAddr>,
        /// Run the first --sample records through the stages and print where each would go; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Records a dry run reads.
        #[arg(long, default_value_t = 20, requires = "dry_run")]
        sample: usize,
    },
    /// Inspect or replay a dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Load and check a pipeline without running it (reaching its lookups).
    Check {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Reach no database: check what the file and local files decide.
        #[arg(long)]
        offline: bool,
    },
    /// Write deterministic orders events (and the customers table beside them).
    Generate {
        /// Which events: `orders` (OrderCreated, ~450 B) or `sessions` (SessionSummarized, ~2 KB, deeply nested).
        #[arg(long, default_value = "orders")]
        workload: Workload,
        /// Number of events.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Fraction of invalid events (0–1).
        #[arg(long, default_value_t = 0.02)]
        invalid_ratio: f64,
        /// Seed: the same seed writes the same bytes.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Events file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Customers CSV (default: customers.csv beside --out; none when writing to standard output).
        #[arg(long)]
        customers: Option<PathBuf>,
        /// Publish the events to Kafka at these brokers instead of writing a file.
        #[arg(long, value_name = "BROKERS")]
        to_kafka: Option<String>,
        /// The topic to publish to (created when missing).
        #[arg(long, default_value = "orders")]
        topic: String,
        /// Partitions of the topic when it is created.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// A librdkafka producer property for --to-kafka, as KEY=VALUE (repeatable).
        #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_property)]
        kafka_properties: Vec<(String, String)>,
    },
    /// Print the JSON Schema of pipeline files (what `schemas/pipeline.schema.json` holds).
    Schema,
    /// Run SQL over a pipeline's Parquet outputs (tables named after the outputs).
    Query {
        /// The SQL.
        sql: String,
        /// The pipeline whose outputs to query.
        #[arg(long, default_value = "pipelines/orders.yaml")]
        pipeline: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Count dead letters by stage, rule and reason, with examples.
    Inspect {
        /// A directory, one file, `s3://bucket/prefix` or `kafka://host:port/topic` (default: the pipeline's DLQ).
        source: Option<String>,
        /// Take the default source and S3 settings from this pipeline.
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// With --pipeline and no SOURCE: the review queue instead of the DLQ.
        #[arg(long)]
        review: bool,
        /// Reasons listed per rule.
        #[arg(long, default_value_t = 5)]
        reasons: usize,
        /// Example records listed per reason.
        #[arg(long, default_value_t = 3)]
        examples: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// On a topic with --pipeline: also the records its replays already took (by default, only those past the replay checkpoint).
        #[arg(long)]
        all: bool,
    },
    /// Run dead letters through the (fixed) pipeline again; what passes goes to its outputs.
    Replay {
        /// A directory, one file, `s3://bucket/prefix` or `kafka://host:port/topic` (default: the pipeline's DLQ).
        source: Option<String>,
        /// The pipeline to run them through.
        #[arg(long)]
        pipeline: PathBuf,
        /// With no SOURCE: replay the review queue instead of the DLQ.
        #[arg(long)]
        review: bool,
        /// Also write the summary as JSON to this file.
        #[arg(long)]
        summary_json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let traces = match init_logs(cli.log_format, cli.otlp_endpoint.as_deref()) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let code = match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    };
    // Sends the spans still buffered.
    drop(traces);
    code
}

/// Logs go to standard error, filtered by `RUST_LOG` (default `warn`); with
/// an OTLP endpoint, the engine's spans (batches and stages) go there too.
fn init_logs(format: LogFormat, otlp: Option<&str>) -> Result<Option<telemetry::Traces>> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let (traces, spans) = match otlp.filter(|e| !e.trim().is_empty()) {
        None => (None, None),
        Some(endpoint) => {
            let (traces, tracer) = telemetry::otlp(endpoint)?;
            let spans = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("tributary_engine", tracing::Level::INFO),
                );
            (Some(traces), Some(spans))
        }
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .init();
    Ok(traces)
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Check { pipeline, offline } => check(&pipeline, offline),
        Command::Run {
            pipeline,
            summary_json,
            until_idle,
            http,
            dry_run,
            sample,
        } => {
            let pipeline = connect(&pipeline)?;
            if dry_run {
                let report = runtime_builder()?.block_on(runtime::dry_run(&pipeline, sample))?;
                print!("{report}");
                return Ok(ExitCode::SUCCESS);
            }
            let options = runtime::RunOptions {
                until_idle,
                metrics: Default::default(),
            };
            let runtime = runtime_builder()?;
            if let Some(addr) = http {
                runtime
                    .block_on(telemetry::serve(addr, options.metrics.clone()))
                    .with_context(|| format!("binding the HTTP port {addr}"))?;
            }
            let summary = runtime.block_on(run_until_done(pipeline, options))?;
            print!("{summary}");
            write_summary(&summary, summary_json.as_deref())?;
            Ok(outcome(&summary))
        }
        Command::Dlq { command } => dlq(command),
        Command::Generate {
            workload,
            events,
            invalid_ratio,
            seed,
            out,
            customers,
            to_kafka,
            topic,
            partitions,
            kafka_properties,
        } => {
            let spec = workload_spec(workload, events, invalid_ratio, seed)?;
            match to_kafka {
                Some(brokers) => {
                    let connection = tributary_connectors::kafka::KafkaConnection {
                        brokers,
                        properties: kafka_properties.into_iter().collect(),
                    };
                    runtime_builder()?.block_on(publish(spec, &connection, &topic, partitions))?;
                    if let Some(path) = customers {
                        write_customers(seed, &path)?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => generate(spec, out, customers),
            }
        }
        Command::Schema => {
            let text = serde_json::to_string_pretty(&config::json_schema())?;
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Query { sql, pipeline } => {
            let plan = load_plan(&pipeline)?;
            let schema = match plan.check_offline()? {
                plan::OfflineSchema::Known(schema) => Some(schema),
                plan::OfflineSchema::Unknown { stage, .. } => {
                    eprintln!(
                        "note: the columns after {stage} come from its lookup database, which query does not reach; partition columns are read as text"
                    );
                    None
                }
            };
            let batches =
                runtime_builder()?.block_on(query::run(&plan.outputs, schema.as_deref(), &sql))?;
            println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { events, dir } => demo(events, &dir),
    }
}

fn write_summary(summary: &Summary, path: Option<&Path>) -> Result<()> {
    if let Some(path) = path {
        let json = serde_json::to_string_pretty(summary)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn dlq(command: DlqCommand) -> Result<ExitCode> {
    use tributary_engine::dlq::{self, DlqSource};
    let source_of =
        |source: Option<String>, plan: Option<&plan::Plan>, review: bool| match (source, plan) {
            (Some(text), _) => Ok(DlqSource::parse(&text)?),
            (None, Some(plan)) => Ok(DlqSource::of_pipeline(plan, review)),
            (None, None) => Err(anyhow::anyhow!(
                "name a SOURCE or a --pipeline whose DLQ to read"
            )),
        };
    match command {
        DlqCommand::Inspect {
            source,
            pipeline,
            review,
            reasons,
            examples,
            json,
            all,
        } => {
            let plan = pipeline.as_deref().map(load_plan).transpose()?;
            let source = source_of(source, plan.as_ref(), review)?;
            let storage = plan.as_ref().map(|p| p.storage.clone()).unwrap_or_default();
            let group = plan.as_ref().filter(|_| !all).map(dlq::replay_group);
            let tally = runtime_builder()?
                .block_on(dlq::inspect(
                    &source,
                    &storage,
                    group.as_deref(),
                    (reasons, examples),
                ))
                .with_context(|| format!("reading {source}"))?;
            let shown = match (&source, &group) {
                (DlqSource::Topic { .. }, Some(group)) => {
                    format!("{source} (past the checkpoint of {group})")
                }
                _ => source.to_string(),
            };
            let report = tally.report(shown);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay {
            source,
            pipeline,
            review,
            summary_json,
        } => {
            let pipeline = connect(&pipeline)?;
            let source = source_of(source, Some(&pipeline.plan), review)?;
            let replayed = runtime_builder()?
                .block_on(dlq::replay(pipeline, &source))
                .with_context(|| format!("replaying {source}"))?;
            print!("{}", replayed.summary);
            println!("{source}: {}", replayed.settled);
            write_summary(&replayed.summary, summary_json.as_deref())?;
            Ok(outcome(&replayed.summary))
        }
    }
}

fn runtime_builder() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The pipeline's plan: what its file decides, no server reached.
fn load_plan(pipeline: &Path) -> Result<plan::Plan> {
    let loaded = config::load(pipeline)?;
    Ok(plan::build(&loaded)?)
}

/// The pipeline, its lookups reached and its stages compiled, ready to run.
fn connect(pipeline: &Path) -> Result<plan::Pipeline> {
    Ok(plan::connect(load_plan(pipeline)?)?)
}

fn check(pipeline: &Path, offline: bool) -> Result<ExitCode> {
    let (plan, schema) = if offline {
        let plan = load_plan(pipeline)?;
        let schema = plan.check_offline()?;
        (plan, schema)
    } else {
        let connected = connect(pipeline)?;
        let schema = plan::OfflineSchema::Known(connected.output_schema);
        (connected.plan, schema)
    };
    println!("{}: ok", pipeline.display());
    println!(
        "  stages: validate{}",
        plan.stages
            .iter()
            .map(|s| format!(" → {}", s.kind()))
            .collect::<String>()
    );
    let columns = match &schema {
        plan::OfflineSchema::Known(schema) => {
            println!("  output columns:");
            schema
        }
        plan::OfflineSchema::Unknown { stage, so_far } => {
            println!(
                "  {stage} and the stages after it are checked once its lookup database is reached (without --offline); the columns entering it:"
            );
            so_far
        }
    };
    for field in columns.fields() {
        println!(
            "    {:<16} {}{}",
            field.name(),
            field.data_type(),
            if field.is_nullable() { "" } else { " not null" }
        );
    }
    for o in &plan.outputs {
        println!(
            "  output {} → {} (partitioned by {:?})",
            o.name, o.path, o.options.partition_by
        );
    }
    let mut topics: Vec<(String, &plan::PlannedTopic)> = plan
        .topic_outputs
        .iter()
        .map(|o| (format!("output {}", o.name), &o.topic))
        .collect();
    for (what, destination) in [("dlq", &plan.dlq), ("review", &plan.review)] {
        if let plan::PlannedDeadLetter::Topic(t) = destination {
            topics.push((what.to_string(), t));
        }
    }
    for (what, t) in topics {
        if t.replication_factor.is_none() {
            eprintln!(
                "warning: {what}: topic {} is created with replication factor 1 when missing, so losing one broker loses its messages; set replication_factor (3 in production) or create the topic beforehand",
                t.topic
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the pipeline; the first Ctrl-C drains in-flight batches and stops.
async fn run_until_done(pipeline: plan::Pipeline, options: runtime::RunOptions) -> Result<Summary> {
    let stop = StopHandle::default();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if stop_requested().await {
            eprintln!("stopping: finishing batches in flight and publishing open files…");
            on_signal.stop();
        }
    });
    Ok(runtime::run(pipeline, stop, options).await?)
}

/// Waits for Ctrl-C or, on Unix, SIGTERM (how Kubernetes and Docker stop a
/// container); false if no signal can be awaited.
async fn stop_requested() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                ctrl_c = tokio::signal::ctrl_c() => ctrl_c.is_ok(),
                _ = term.recv() => true,
            };
        }
    }
    tokio::signal::ctrl_c().await.is_ok()
}

fn outcome(summary: &Summary) -> ExitCode {
    if !summary.failures().is_empty() || !summary.totals.balanced() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn generate(
    spec: WorkloadSpec,
    out: Option<PathBuf>,
    customers: Option<PathBuf>,
) -> Result<ExitCode> {
    let (events, seed) = (spec.events, spec.seed);
    let customers = customers.or_else(|| out.as_ref().map(|o| o.with_file_name("customers.csv")));
    match &out {
        Some(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let mut file = BufWriter::new(
                File::create(path).with_context(|| format!("creating {}", path.display()))?,
            );
            let mut invalid = 0u64;
            workload::stream_events(spec, &mut file, |e| {
                invalid += u64::from(matches!(e, workload::Expected::Dlq(_)));
            })?;
            file.flush()?;
            eprintln!(
                "wrote {events} events ({invalid} invalid) to {}",
                path.display()
            );
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = BufWriter::new(stdout.lock());
            workload::stream_events(spec, &mut lock, |_| {})?;
            lock.flush()?;
        }
    }
    if let Some(path) = customers {
        write_customers(seed, &path)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

fn workload_spec(
    workload: Workload,
    events: u64,
    invalid_ratio: f64,
    seed: u64,
) -> Result<WorkloadSpec> {
    if !(0.0..=1.0).contains(&invalid_ratio) {
        bail!("--invalid-ratio must be between 0 and 1, got {invalid_ratio}");
    }
    Ok(WorkloadSpec {
        workload,
        events,
        invalid_ratio,
        seed,
    })
}

fn write_customers(seed: u64, path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file =
        BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
    let rows = workload::write_customers(seed, &mut file)?;
    file.flush()?;
    eprintln!("wrote {rows} customers to {}", path.display());
    Ok(())
}

/// Publishes the generated events to `topic` (created with `partitions` when missing),
/// keyed by event number, and waits until the broker acknowledged all of them.
async fn publish(
    spec: WorkloadSpec,
    connection: &tributary_connectors::kafka::KafkaConnection,
    topic: &str,
    partitions: i32,
) -> Result<()> {
    use tributary_connectors::kafka::admin;
    use tributary_connectors::kafka::producer::{TopicProducer, producer};
    let brokers = &connection.brokers;
    let count = u32::try_from(partitions).unwrap_or(1).max(1);
    if admin::ensure_topic(connection, topic, count, 1).await? {
        eprintln!("created topic {topic} with {partitions} partitions");
    }
    let started = std::time::Instant::now();
    use tributary_connectors::retry::{RetryPolicy, RetryTargets};
    let unlisted = RetryTargets::default();
    let producer = producer(connection, RetryPolicy::default(), &unlisted)?;
    let mut out = TopicProducer::new(producer, topic);
    let mut invalid = 0u64;
    for (n, (line, expected)) in workload::events(spec).enumerate() {
        if matches!(expected, workload::Expected::Dlq(_)) {
            invalid += 1;
        }
        out.send(Some(n.to_string().as_bytes()), &line, None)
            .await?;
    }
    out.flush().await?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "published {} events ({invalid} invalid) to {topic} at {brokers} in {secs:.2} s ({:.0} events/s)",
        spec.events,
        spec.events as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// The bundled orders pipeline and its schema, compiled in so the demo runs from any directory.
const ORDERS_PIPELINE: &str = include_str!("../../pipelines/orders.yaml");
const ORDERS_SCHEMA: &str = include_str!("../../schemas/events/order_created.v1.schema.json");

/// Writes the bundled pipeline (and the schema it names, at the same relative path) under `dir`.
fn bundled_pipeline(dir: &Path) -> Result<PathBuf> {
    let pipeline = dir.join("pipelines/orders.yaml");
    let schema = dir.join("schemas/events/order_created.v1.schema.json");
    for (path, text) in [(&pipeline, ORDERS_PIPELINE), (&schema, ORDERS_SCHEMA)] {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(pipeline)
}

fn demo(events: u64, dir: &Path) -> Result<ExitCode> {
    let input = dir.join("input");
    let out = dir.join("out");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&input).with_context(|| format!("creating {}", input.display()))?;
    let events_file = input.join("orders.ndjson");
    let customers_file = input.join("customers.csv");
    println!(
        "generating {events} order events (2 % invalid) in {}",
        input.display()
    );
    generate(
        workload_spec(Workload::Orders, events, 0.02, 42)?,
        Some(events_file.clone()),
        Some(customers_file.clone()),
    )?;
    let absolute = |p: &Path| -> Result<String> {
        Ok(std::fs::canonicalize(p)
            .or_else(|_| std::env::current_dir().map(|d| d.join(p)))
            .with_context(|| format!("resolving {}", p.display()))?
            .display()
            .to_string())
    };
    std::fs::create_dir_all(&out)?;
    let vars = [
        ("TRIBUTARY_INPUT", absolute(&events_file)?),
        ("TRIBUTARY_CUSTOMERS", absolute(&customers_file)?),
        ("TRIBUTARY_OUT", absolute(&out)?),
    ];
    for (name, value) in &vars {
        // SAFETY: no other thread exists yet; the async runtime starts below.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(name, value)
        };
    }
    let pipeline = bundled_pipeline(dir)?;
    println!(
        "running {} (the bundled pipelines/orders.yaml)",
        pipeline.display()
    );
    let pipeline = connect(&pipeline)?;
    // The run consumes the pipeline; keep what the example query needs.
    let (outputs, schema) = (
        pipeline.plan.outputs.clone(),
        pipeline.output_schema.clone(),
    );
    let runtime = runtime_builder()?;
    let summary = runtime.block_on(run_until_done(pipeline, runtime::RunOptions::default()))?;
    print!("{summary}");
    let sql = "SELECT event_date, count(*) AS orders, round(sum(total_cents) / 100.0, 2) AS revenue, \
               count(DISTINCT customer_id) AS customers, sum(CASE WHEN is_high_value THEN 1 ELSE 0 END) AS high_value \
               FROM orders GROUP BY event_date ORDER BY event_date";
    println!("\nexample query: tributary query \"{sql}\"");
    let batches = runtime.block_on(query::run(&outputs, Some(&schema), sql))?;
    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    Ok(outcome(&summary))
}
