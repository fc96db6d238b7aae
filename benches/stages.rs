//! Criterion benches per stage, on the orders and the sessions workloads:
//! JSON lines → validated Arrow batch (clean, and with 2 % invalid lines),
//! transform (the pipeline's SQL), enrich (the 100,000-row customers
//! lookup), and Parquet encoding (zstd, as the sink writes it). Each reports
//! records/s and input bytes/s.
//!
//! `cargo bench -p tributary-benches --bench stages` (add a filter such as
//! `validate/orders` to run one).

use std::hint::black_box;
use std::time::Duration;

use arrow::array::RecordBatch;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use parquet::arrow::ArrowWriter;
use tributary_benches::{Lines, lines, plan};
use tributary_engine::plan::Pipeline;
use tributary_engine::workload::Workload;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Records per measured iteration: a few batches, so per-batch overheads count as they do in a run.
const RECORDS: u64 = 4 * tributary_benches::BATCH_RECORDS as u64;

const WORKLOADS: [(&str, Workload); 2] = [
    ("orders", Workload::Orders),
    ("sessions", Workload::Sessions),
];

fn throughput(lines: &Lines) -> Throughput {
    Throughput::ElementsAndBytes {
        elements: lines.records,
        bytes: lines.bytes,
    }
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    group
}

/// The batches each stage receives in a run: validated, transformed, enriched.
struct Stages {
    validated: Vec<RecordBatch>,
    transformed: Vec<RecordBatch>,
    enriched: Vec<RecordBatch>,
}

fn run_stages(plan: &Pipeline, lines: &Lines) -> Stages {
    let mut stages = Stages {
        validated: Vec::new(),
        transformed: Vec::new(),
        enriched: Vec::new(),
    };
    for raw in &lines.batches {
        let validated = plan.plan.validate.apply(raw).expect("validate").batch;
        let transformed = plan.stages[0]
            .stage
            .apply(&validated)
            .expect("transform")
            .batch;
        let enriched = plan.stages[1]
            .stage
            .apply(&transformed)
            .expect("enrich")
            .batch;
        stages.validated.push(validated);
        stages.transformed.push(transformed);
        stages.enriched.push(enriched);
    }
    stages
}

fn stages(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, workload) in WORKLOADS {
        let plan = plan(workload, dir.path()).expect("the bench pipeline plans");
        let clean = lines(workload, RECORDS, 0.0, 1);
        let dirty = lines(workload, RECORDS, 0.02, 1);
        let stages = run_stages(&plan, &clean);

        let mut g = group(c, &format!("validate/{name}"));
        for (label, input) in [("clean", &clean), ("2pct_invalid", &dirty)] {
            g.throughput(throughput(input));
            g.bench_function(label, |b| {
                b.iter(|| {
                    for raw in &input.batches {
                        black_box(plan.plan.validate.apply(raw).expect("validate"));
                    }
                })
            });
        }
        g.finish();

        for (i, (stage, inputs)) in [
            ("transform", &stages.validated),
            ("enrich", &stages.transformed),
        ]
        .into_iter()
        .enumerate()
        {
            let mut g = group(c, &format!("{stage}/{name}"));
            g.throughput(throughput(&clean));
            g.bench_function("clean", |b| {
                b.iter(|| {
                    for batch in inputs {
                        black_box(plan.stages[i].stage.apply(batch).expect("stage"));
                    }
                })
            });
            g.finish();
        }

        let output = &plan.plan.outputs[0];
        let props = tributary_connectors::parquet::writer_properties(&output.options)
            .expect("writer properties");
        // The sink leaves the partition columns out of the files.
        let schema = stages.enriched[0].schema();
        let data_columns: Vec<usize> = (0..schema.fields().len())
            .filter(|i| {
                !output
                    .options
                    .partition_by
                    .contains(schema.field(*i).name())
            })
            .collect();
        let files: Vec<RecordBatch> = stages
            .enriched
            .iter()
            .map(|b| b.project(&data_columns).expect("projection"))
            .collect();
        let mut g = group(c, &format!("parquet_zstd/{name}"));
        g.throughput(throughput(&clean));
        g.bench_function("clean", |b| {
            b.iter(|| {
                let mut writer =
                    ArrowWriter::try_new(Vec::new(), files[0].schema(), Some(props.clone()))
                        .expect("parquet writer");
                for batch in &files {
                    writer.write(batch).expect("encode");
                }
                black_box(writer.into_inner().expect("finish").len())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, stages);
criterion_main!(benches);
