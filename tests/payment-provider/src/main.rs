//! `tributary-payment-provider [--listen ADDR]`: the stand-in payment
//! provider for tests and the local stack (default 127.0.0.1:8090).

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:8090".to_string();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().context("--listen needs an address")?,
            other => anyhow::bail!(
                "unknown argument `{other}`; usage: tributary-payment-provider [--listen ADDR]"
            ),
        }
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    eprintln!(
        "the stand-in payment provider listens on {}",
        listener.local_addr()?
    );
    axum::serve(listener, tributary_payment_provider::router())
        .await
        .context("serving")
}
