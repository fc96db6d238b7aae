//! Open-loop load on the orders service, corrected for coordinated
//! omission: requests are due at a fixed rate and each is sent when due,
//! however many are still waiting for their answer (up to `--max-in-flight`,
//! past which a due request counts as an error); its latency counts from
//! when it was due. `oha` cannot do this for order creation: every order
//! needs its own Idempotency-Key.
//!
//! orders-load --base http://127.0.0.1:18082 --token T --mode create|read \
//!     --rate 1000 --seconds 20 [--skus 64] [--ids-file F] [--label L]
//!
//! `create` places one-line orders over `--skus` products (`SKU-90000` on)
//! with fresh keys; `read` reads the orders listed in `--ids-file` (one id a
//! line) in turn. `--mode seed --count N` places N orders as fast as 32
//! clients can and writes their ids to `--ids-file`. Prints a Markdown row:
//! offered and achieved rate, p50/p95/p99/p99.9 in ms, answers and errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

struct Args {
    base: String,
    token: String,
    mode: String,
    rate: f64,
    seconds: f64,
    skus: usize,
    ids_file: Option<String>,
    count: usize,
    max_in_flight: usize,
    label: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut parsed = Args {
        base: String::new(),
        token: String::new(),
        mode: "create".into(),
        rate: 100.0,
        seconds: 20.0,
        skus: 64,
        ids_file: None,
        count: 1000,
        max_in_flight: 20_000,
        label: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--base" => parsed.base = value,
            "--token" => parsed.token = value,
            "--mode" => parsed.mode = value,
            "--rate" => parsed.rate = number(&value)?,
            "--seconds" => parsed.seconds = number(&value)?,
            "--skus" => parsed.skus = number(&value)? as usize,
            "--ids-file" => parsed.ids_file = Some(value),
            "--count" => parsed.count = number(&value)? as usize,
            "--max-in-flight" => parsed.max_in_flight = number(&value)? as usize,
            "--label" => parsed.label = Some(value),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if parsed.base.is_empty() || parsed.token.is_empty() {
        return Err("--base and --token are needed".into());
    }
    Ok(parsed)
}

fn order_body(n: usize, skus: usize) -> Value {
    json!({"lines": [{"sku": format!("SKU-{:05}", 90_000 + n % skus.max(1)), "qty": 1}],
        "currency": "USD", "shipping": {"country": "DE"}})
}

/// Places one order with a fresh key; its id.
async fn place(http: &reqwest::Client, args: &Args, n: usize) -> Result<String, String> {
    let response = http
        .post(format!("{}/api/v1/orders", args.base))
        .bearer_auth(&args.token)
        .header(
            "idempotency-key",
            format!("load-{}-{n}", std::process::id()),
        )
        .json(&order_body(n, args.skus))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != reqwest::StatusCode::CREATED {
        return Err(format!("HTTP {}", response.status().as_u16()));
    }
    let order: Value = response.json().await.map_err(|e| e.to_string())?;
    order["id"]
        .as_str()
        .map(str::to_string)
        .ok_or("no id".to_string())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Arc::new(args()?);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    if args.mode == "seed" {
        let file = args.ids_file.clone().ok_or("--ids-file is needed")?;
        let next = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..32)
            .map(|_| {
                let (http, args, next) = (http.clone(), args.clone(), next.clone());
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= args.count {
                            return ids;
                        }
                        if let Ok(id) = place(&http, &args, 1_000_000_000 + n).await {
                            ids.push(id);
                        }
                    }
                })
            })
            .collect();
        let mut ids = Vec::new();
        for client in clients {
            ids.extend(client.await.map_err(|e| e.to_string())?);
        }
        std::fs::write(&file, ids.join("\n")).map_err(|e| format!("{file}: {e}"))?;
        eprintln!("seeded {} orders", ids.len());
        return Ok(());
    }
    let ids: Arc<Vec<String>> = Arc::new(match &args.ids_file {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| format!("{file}: {e}"))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    });
    if args.mode == "read" && ids.is_empty() {
        return Err("--mode read needs --ids-file with order ids".into());
    }
    let total = (args.rate * args.seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let origin = tokio::time::Instant::now() + Duration::from_millis(200);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(total);
    let mut refused = 0usize;
    for n in 0..total {
        let due = origin + interval * n as u32;
        tokio::time::sleep_until(due).await;
        if in_flight.load(Ordering::Relaxed) >= args.max_in_flight {
            refused += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (http, args, ids, in_flight) =
            (http.clone(), args.clone(), ids.clone(), in_flight.clone());
        tasks.push(tokio::spawn(async move {
            let ok = if args.mode == "read" {
                let id = &ids[n % ids.len()];
                http.get(format!("{}/api/v1/orders/{id}", args.base))
                    .bearer_auth(&args.token)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            } else {
                place(&http, &args, n).await.is_ok()
            };
            in_flight.fetch_sub(1, Ordering::Relaxed);
            (due.elapsed().as_micros() as u64, ok)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = refused;
    for task in tasks {
        let (latency, ok) = task.await.map_err(|e| e.to_string())?;
        latencies.push(latency);
        if !ok {
            errors += 1;
        }
    }
    let took = origin.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index] as f64 / 1000.0
    };
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| match args.mode.as_str() {
            "read" => "GET /api/v1/orders/{id}".into(),
            _ => "POST /api/v1/orders".into(),
        });
    println!(
        "| {label} | {}/s | {:.0}/s | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
        args.rate,
        (total - errors) as f64 / took,
        at(0.50),
        at(0.95),
        at(0.99),
        at(0.999),
        total - errors,
        errors
    );
    Ok(())
}
