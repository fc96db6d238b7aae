//! Open-loop refresh load on the auth service, corrected for coordinated
//! omission: `oha` sends one body to every request, but a refresh token is
//! spent by its use, so each of `--sessions` sessions is a chain that
//! presents the token its previous refresh returned. Requests are due at a
//! fixed rate, dealt to the chains in turn; a chain sends a request once it
//! is due and the chain's previous answer is in, and its latency counts
//! from when it was due.
//!
//! refresh-load --base http://127.0.0.1:18081 --rate 5000 --seconds 20 --sessions 200 \
//!     --accounts-file F [--ready-file R --wait 3]
//!
//! With `--ready-file`, the file is written once the sessions are logged in
//! and the load starts `--wait` seconds later, so that a script can start
//! other load (saturating logins) without slowing the set-up.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Args {
    base: String,
    rate: f64,
    seconds: f64,
    sessions: usize,
    logins: Vec<String>,
    ready_file: Option<String>,
    wait: f64,
}

fn args() -> Result<Args, String> {
    let mut base = None;
    let (mut rate, mut seconds, mut sessions) = (1000.0, 20.0, 200);
    let mut logins = Vec::new();
    let (mut ready_file, mut wait) = (None, 0.0);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--base" => base = Some(value),
            "--rate" => rate = number(&value)?,
            "--seconds" => seconds = number(&value)?,
            "--sessions" => sessions = number(&value)? as usize,
            "--ready-file" => ready_file = Some(value),
            "--wait" => wait = number(&value)?,
            "--accounts-file" => {
                let text = std::fs::read_to_string(&value).map_err(|e| format!("{value}: {e}"))?;
                logins = text.lines().map(str::to_string).collect();
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if logins.is_empty() {
        return Err("--accounts-file (JSON login bodies, one per line) is needed".into());
    }
    Ok(Args {
        base: base.ok_or("--base is needed")?,
        rate,
        seconds,
        sessions,
        logins,
        ready_file,
        wait,
    })
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = args()?;
    let http = reqwest::Client::new();
    // Sessions first (each a login, so a bcrypt check): a few at a time.
    let mut tokens = Vec::with_capacity(args.sessions);
    let started = Instant::now();
    for chunk in (0..args.sessions).collect::<Vec<_>>().chunks(4) {
        let logins = chunk.iter().map(|i| {
            let http = http.clone();
            let body: Value =
                serde_json::from_str(&args.logins[i % args.logins.len()]).unwrap_or_default();
            let url = format!("{}/auth/login", args.base);
            async move {
                // Logins may be saturated on purpose: retry the 503s.
                for _ in 0..120 {
                    let response = http
                        .post(&url)
                        .json(&body)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    let answer: Value = response.json().await.map_err(|e| e.to_string())?;
                    return answer["refresh_token"]
                        .as_str()
                        .map(str::to_string)
                        .ok_or(format!("login: {answer}"));
                }
                Err("logins stayed unavailable for a minute".to_string())
            }
        });
        for token in futures::future::join_all(logins).await {
            tokens.push(token?);
        }
    }
    eprintln!(
        "{} sessions in {:.1} s",
        tokens.len(),
        started.elapsed().as_secs_f64()
    );
    // Tell a script the sessions exist (it starts other load), then let that load settle.
    if let Some(file) = &args.ready_file {
        std::fs::write(file, b"ready\n").map_err(|e| format!("{file}: {e}"))?;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.wait)).await;

    let total = (args.rate * args.seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let origin = tokio::time::Instant::now() + Duration::from_millis(200);
    let chains = tokens.len();
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(chain, mut token)| {
            let http = http.clone();
            let url = format!("{}/auth/refresh", args.base);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                let mut i = chain;
                while i < total {
                    let due = origin + interval * i as u32;
                    tokio::time::sleep_until(due).await;
                    let answer = http
                        .post(&url)
                        .json(&json!({ "refresh_token": token }))
                        .send()
                        .await;
                    let ok = match answer {
                        Ok(response) if response.status().is_success() => {
                            match response.json::<Value>().await {
                                Ok(body) => match body["refresh_token"].as_str() {
                                    Some(next) => {
                                        token = next.to_string();
                                        true
                                    }
                                    None => false,
                                },
                                Err(_) => false,
                            }
                        }
                        _ => false,
                    };
                    latencies.push(due.elapsed().as_micros() as u64);
                    if !ok {
                        errors += 1;
                    }
                    i += chains;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for task in tasks {
        let (mut l, e) = task.await.map_err(|e| e.to_string())?;
        latencies.append(&mut l);
        errors += e;
    }
    let took = origin.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index] as f64 / 1000.0
    };
    println!(
        "| POST /auth/refresh | {}/s | {:.0}/s | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
        args.rate,
        latencies.len() as f64 / took,
        at(0.50),
        at(0.95),
        at(0.99),
        at(0.999),
        latencies.len() - errors,
        errors
    );
    Ok(())
}
