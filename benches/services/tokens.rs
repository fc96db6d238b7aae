//! Access tokens per core: signing (what every login and refresh costs the
//! auth service) and local verification (what every request costs every
//! other service), both a token's first verification (the Ed25519 check)
//! and a repeated one (the verified-token cache); and the bcrypt check that
//! bounds logins.
//!
//! cargo bench -p tributary-service-benches --bench tokens

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tributary_kit::jwt::{ACCESS_TOKEN_TYPE, Verifier, VerifierSettings};

const ISSUER: &str = "https://auth.bench";
const AUDIENCE: &str = "tributary";

fn key() -> (EncodingKey, String) {
    let seed = [7u8; 32];
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    let x = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        public.to_bytes(),
    );
    (EncodingKey::from_ed_der(&der), x)
}

fn header() -> Header {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(ACCESS_TOKEN_TYPE.into());
    header.kid = Some("bench".into());
    header
}

fn claims(n: u64) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    serde_json::json!({
        "user_id": "7f1c9d0e-2a41-4b8e-9a55-3c1d2e4f5a6b", "email": "ada@example.com",
        "roles": ["customer"], "permissions": ["read:orders", "write:orders"],
        "iat": now, "exp": now + 3600, "iss": ISSUER, "aud": AUDIENCE,
        "jti": format!("jti-{n}"), "sid": "4e1f0c2b-9d3a-4c5e-8f7a-1b2c3d4e5f60",
        "amr": ["pwd"], "auth_time": now,
    })
}

fn verifier(x: &str) -> Verifier {
    let verifier = Verifier::new(VerifierSettings::new(None, ISSUER, AUDIENCE));
    let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
        "use": "sig", "kid": "bench", "x": x}]});
    verifier.set_keys(&serde_json::from_value(jwks).unwrap_or_else(|e| panic!("jwks: {e}")));
    verifier
}

fn tokens(c: &mut Criterion) {
    let (key, x) = key();
    let header = header();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let sign = |n: u64| {
        jsonwebtoken::encode(&header, &claims(n), &key).unwrap_or_else(|e| panic!("sign: {e}"))
    };

    let mut group = c.benchmark_group("access_token");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    let mut n = 0;
    group.bench_function("sign (EdDSA)", |b| {
        b.iter(|| {
            n += 1;
            sign(n)
        })
    });

    // Distinct tokens, a fresh verifier per sample: every one is a miss.
    let pool: Vec<String> = (0..60_000).map(sign).collect();
    group.bench_function("verify, first time (signature)", |b| {
        b.iter_custom(|iters| {
            let verifier = verifier(&x);
            runtime.block_on(async {
                let started = Instant::now();
                for i in 0..iters {
                    let token = &pool[i as usize % pool.len()];
                    let claims = verifier.verify(token).await;
                    assert!(claims.is_ok());
                }
                started.elapsed()
            })
        })
    });

    let verifier = verifier(&x);
    let token = pool[0].clone();
    group.bench_function("verify, again (cache)", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let claims = verifier.verify(&token).await;
                    assert!(claims.is_ok());
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

/// The auth service's password check at its default cost: what bounds
/// logins per core.
fn passwords(c: &mut Criterion) {
    let hash = bcrypt::hash("correct horse battery", 12).unwrap_or_else(|e| panic!("hash: {e}"));
    let mut group = c.benchmark_group("password");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("bcrypt verify, cost 12", |b| {
        b.iter(|| bcrypt::verify("correct horse battery", &hash))
    });
    group.finish();
}

criterion_group!(benches, tokens, passwords);
criterion_main!(benches);
