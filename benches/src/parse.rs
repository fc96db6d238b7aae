//! The parse-only reference: NDJSON → Arrow record batches with arrow-json
//! alone, in the schema the workload's validate stage produces. No
//! validation, no routing, no output: the floor under what a pipeline costs.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use arrow::datatypes::SchemaRef;
use arrow::json::ReaderBuilder;
use tributary_engine::workload::Workload;

use tributary_stages::validate::{Validate, ValidateSpec};

/// Parses `file` with `threads` threads (each its own byte range, cut at line ends) and prints the rate.
pub fn run(file: &Path, workload: Workload, threads: usize) -> Result<()> {
    let schema_file = tributary_benches::event_schema(workload);
    let schema = serde_json::from_slice(&std::fs::read(&schema_file)?)
        .with_context(|| format!("reading {}", schema_file.display()))?;
    let schema = Validate::new(ValidateSpec {
        schema,
        max_record_bytes: usize::MAX,
        rules: Vec::new(),
    })?
    .output_schema();
    let size = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    let bounds = line_bounds(file, size, threads.max(1))?;
    let started = Instant::now();
    let rows = std::thread::scope(|scope| {
        let workers: Vec<_> = bounds
            .windows(2)
            .map(|range| {
                let schema = schema.clone();
                let (start, end) = (range[0], range[1]);
                scope.spawn(move || parse_range(file, start, end, schema))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| anyhow::anyhow!("a parse thread panicked"))?
            })
            .sum::<Result<u64>>()
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "engine": "arrow-json parse only",
            "threads": threads,
            "events": rows,
            "input_bytes": size,
            "wall_s": secs,
            "events_per_s": rows as f64 / secs,
            "input_mb_per_s": size as f64 / 1e6 / secs,
        })
    );
    Ok(())
}

/// `parts + 1` offsets from 0 to `size`, each inner one just after a newline.
fn line_bounds(file: &Path, size: u64, parts: usize) -> Result<Vec<u64>> {
    let mut bounds = vec![0];
    let mut reader = BufReader::new(File::open(file)?);
    for i in 1..parts as u64 {
        let guess = (size * i / parts as u64).max(*bounds.last().unwrap_or(&0));
        reader.seek(SeekFrom::Start(guess))?;
        let mut skipped = Vec::new();
        let n = reader.read_until(b'\n', &mut skipped)?;
        bounds.push((guess + n as u64).min(size));
    }
    bounds.push(size);
    Ok(bounds)
}

fn parse_range(file: &Path, start: u64, end: u64, schema: SchemaRef) -> Result<u64> {
    let mut reader = File::open(file)?;
    reader.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::with_capacity(4 << 20, reader.take(end - start));
    let mut decoder = ReaderBuilder::new(schema)
        .with_batch_size(tributary_benches::BATCH_RECORDS)
        .build_decoder()?;
    let mut rows = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let consumed = decoder.decode(buf)?;
        let len = buf.len();
        reader.consume(consumed);
        if (consumed < len || decoder.len() >= tributary_benches::BATCH_RECORDS)
            && let Some(batch) = decoder.flush()?
        {
            rows += batch.num_rows() as u64;
        }
    }
    if let Some(batch) = decoder.flush()? {
        rows += batch.num_rows() as u64;
    }
    Ok(rows)
}
