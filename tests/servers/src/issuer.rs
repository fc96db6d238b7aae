//! A test issuer of access tokens: one Ed25519 key whose JWKS is served
//! over HTTP, as the auth service's is, for services that verify tokens
//! locally.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

/// The `iss` of its tokens.
pub const ISSUER: &str = "https://auth.test";

/// The test issuer: one Ed25519 key, its JWKS served on a local port.
pub struct Issuer {
    encoding: jsonwebtoken::EncodingKey,
    pub jwks_url: String,
}

pub async fn issuer() -> &'static Issuer {
    static ISSUER_CELL: tokio::sync::OnceCell<Issuer> = tokio::sync::OnceCell::const_new();
    ISSUER_CELL
        .get_or_init(|| async {
            let seed: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
            let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
            let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes());
            // PKCS#8 for an Ed25519 seed: the fixed prefix, then the seed.
            let mut der = vec![
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20,
            ];
            der.extend_from_slice(&seed);
            let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
                "use": "sig", "kid": "test-key", "x": x}]});
            // Its own runtime thread: the JWKS must answer whichever test's
            // runtime is running (each #[tokio::test] has its own).
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    tx.send(listener.local_addr().unwrap()).unwrap();
                    let app = axum::Router::new().route(
                        "/jwks",
                        axum::routing::get(move || async move { axum::Json(jwks.clone()) }),
                    );
                    axum::serve(listener, app).await.unwrap();
                });
            });
            let addr = rx.recv().unwrap();
            Issuer {
                encoding: jsonwebtoken::EncodingKey::from_ed_der(&der),
                jwks_url: format!("http://{addr}/jwks"),
            }
        })
        .await
}

impl Issuer {
    /// An access token for `user` with `roles` and `permissions`.
    pub fn token(&self, user: &str, roles: &[&str], permissions: &[&str]) -> String {
        self.sign(user, roles, permissions, &uuid::Uuid::new_v4().to_string())
    }

    /// A customer's token and its session id (what a logout revokes).
    pub fn customer_session(&self, user: &str) -> (String, String) {
        let sid = uuid::Uuid::new_v4().to_string();
        let token = self.sign(user, &["customer"], &["read:orders", "write:orders"], &sid);
        (token, sid)
    }

    fn sign(&self, user: &str, roles: &[&str], permissions: &[&str], sid: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "user_id": user, "email": format!("{user}@example.com"), "roles": roles,
            "permissions": permissions, "iat": now, "exp": now + 3600, "iss": ISSUER,
            "aud": "tributary", "jti": uuid::Uuid::new_v4().to_string(),
            "sid": sid, "amr": ["pwd"], "auth_time": now,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some("test-key".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }

    /// A customer who may read and place orders.
    pub fn customer(&self, user: &str) -> String {
        self.token(user, &["customer"], &["read:orders", "write:orders"])
    }

    /// An admin.
    pub fn admin(&self) -> String {
        self.token("admin-1", &["admin"], &[])
    }
}
