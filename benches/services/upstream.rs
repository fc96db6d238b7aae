//! The small fast upstream the gateway benchmark puts nginx and the gateway
//! in front of: every path answers a 64-byte JSON body, on keep-alive
//! HTTP/1.1, from a plain hyper server. It also serves `/jwks` for one
//! Ed25519 key and prints, on start, an access token signed with it (for the
//! gateway's user-token checks), so the benchmark needs no auth service.
//!
//! bench-upstream --listen 127.0.0.1:18500 [--threads 1]

use std::convert::Infallible;
use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const BODY: &[u8] = br#"{"id":42,"name":"Tea","price":1999,"currency":"USD","stock":100}"#;

fn main() -> Result<(), String> {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 18500).into();
    let mut threads = 1;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
            "--threads" => threads = value.parse().map_err(|e| format!("--threads: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let (jwks, token) = signing();
    println!("{token}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(serve(listen, jwks))
}

/// A JWKS with one Ed25519 key and a long-lived token it signed.
fn signing() -> (Bytes, String) {
    let seed: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(7).wrapping_add(3));
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes());
    let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
        "use": "sig", "kid": "bench", "x": x}]});
    // PKCS#8 for an Ed25519 seed: the fixed prefix, then the seed.
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "user_id": "bench", "email": "bench@example.com", "roles": ["customer"],
        "permissions": ["read:orders", "write:orders"], "iat": now, "exp": now + 86_400,
        "iss": "bench", "aud": "tributary", "jti": "bench", "sid": "bench", "amr": ["pwd"],
        "auth_time": now,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some("bench".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&der),
    )
    .unwrap_or_default();
    (Bytes::from(jwks.to_string()), token)
}

async fn serve(listen: SocketAddr, jwks: Bytes) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listening on {listen}: {e}"))?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let jwks = jwks.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let body = if request.uri().path() == "/jwks" {
                    jwks.clone()
                } else {
                    Bytes::from_static(BODY)
                };
                async move {
                    let mut response = Response::new(Full::new(body));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
