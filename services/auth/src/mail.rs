//! Mail: queued in the outbox (sealed) and delivered to an SMTP server.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Body;
use lettre::message::Mailbox;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::sealing::Keyring;
use tributary_kit::outbox::{Destination, Pending, Sink};

/// Mail in the outbox: each delivered on its own.
pub const SMTP: Destination = Destination::independent("smtp");

/// The sealing context of queued mail.
const CONTEXT: &[u8] = b"outbox-mail";

/// A plain-text mail.
#[derive(Serialize, Deserialize)]
pub struct Mail {
    /// The recipient's address.
    pub to: String,
    /// The subject.
    pub subject: String,
    /// The body.
    pub text: String,
}

impl Mail {
    /// The mail sealed for the outbox (it may carry a live token).
    pub fn seal(&self, keyring: &Keyring) -> Vec<u8> {
        let plain = serde_json::to_vec(self).unwrap_or_default();
        keyring.seal(&plain, CONTEXT)
    }

    fn open(sealed: &[u8], keyring: &Keyring) -> Result<Self, String> {
        let plain = keyring
            .open(sealed, CONTEXT)
            .map_err(|e| format!("opening queued mail: {e}"))?;
        serde_json::from_slice(&plain).map_err(|e| format!("reading queued mail: {e}"))
    }
}

/// Sends through one SMTP server, from one address.
pub struct SmtpSink {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    keyring: Arc<Keyring>,
}

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl SmtpSink {
    /// A sink to `url` (`smtp://host:port`, `smtp://…?tls=required` for
    /// STARTTLS, `smtps://` for TLS; credentials as `user:password@`).
    pub fn new(url: &str, from: &str, keyring: Arc<Keyring>) -> Result<Self, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| format!("the SMTP URL: {e}"))?
            .timeout(Some(Duration::from_secs(10)))
            .build();
        let from = from
            .parse()
            .map_err(|e| format!("the sender address `{from}`: {e}"))?;
        Ok(Self {
            transport,
            from,
            keyring,
        })
    }

    async fn send(&self, row: &Pending) -> Result<(), String> {
        let mail = Mail::open(&row.payload, &self.keyring)?;
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|e| format!("the recipient address: {e}"))?;
        // 7bit when the text allows it (ASCII, no NUL, lines under RFC 5322's
        // 998 bytes), so a link stays whole in the raw mail: lettre would pick
        // quoted-printable for any line over 78 and cut the link with `=`.
        let text = mail.text.replace("\r\n", "\n");
        let body = if text.is_ascii() && !text.contains('\0') && text.lines().all(|l| l.len() < 998)
        {
            Body::dangerous_pre_encoded(
                text.replace('\n', "\r\n").into_bytes(),
                ContentTransferEncoding::SevenBit,
            )
        } else {
            Body::new(text)
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| format!("composing the mail: {e}"))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("sending: {e}"))
    }
}

impl Sink for SmtpSink {
    async fn deliver(&self, batch: &[Pending]) -> Vec<Result<(), String>> {
        futures::future::join_all(batch.iter().map(|row| self.send(row))).await
    }
}
