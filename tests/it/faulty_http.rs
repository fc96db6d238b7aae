//! An HTTP/1.1 proxy that injects the faults a network has between our
//! process and a real server (moto, fakesnow): a request forwarded and done
//! whose reply never comes back, or an answer the server would give under
//! conditions a test cannot cause (an expired session). Each connection
//! carries one exchange (`Connection: close` both ways), so a dropped reply
//! is a connection closed after the server did the work.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the proxy saw it.
pub struct Request<'a> {
    /// `METHOD /path?query HTTP/1.1`.
    pub line: &'a str,
    /// Header lines, as sent.
    pub headers: &'a [String],
    /// The body.
    pub body: &'a [u8],
}

impl Request<'_> {
    /// Whether a header named `name` (any case) is present.
    pub fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| {
            h.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.body).into_owned()
    }
}

/// What the proxy does with a request.
pub enum Fault {
    /// Forward it and return the reply.
    None,
    /// Forward it, let the server finish, and close the client's connection
    /// without a reply.
    LoseReply,
    /// Do not forward it; answer with this status and JSON body.
    Answer(u16, String),
}

type Rule = dyn Fn(&Request<'_>) -> Fault + Send + Sync;

/// The proxy; stops when dropped.
pub struct FaultyHttp {
    /// Where clients connect.
    pub port: u16,
    injected: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FaultyHttp {
    /// A proxy to `127.0.0.1:upstream` applying `rule` to every request.
    pub fn start(
        upstream: u16,
        rule: impl Fn(&Request<'_>) -> Fault + Send + Sync + 'static,
    ) -> FaultyHttp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let injected = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let rule: Arc<Rule> = Arc::new(rule);
        let (injected2, stop2) = (injected.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (rule, injected) = (rule.clone(), injected2.clone());
                        std::thread::spawn(move || {
                            let _ = exchange(client, upstream, &*rule, &injected);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultyHttp {
            port,
            injected,
            stop,
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The request lines of every request a fault was injected into, in order.
    pub fn injected(&self) -> Vec<String> {
        self.injected.lock().unwrap().clone()
    }
}

impl Drop for FaultyHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads a head (request or status line and headers) up to the blank line.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<(String, Vec<String>)>> {
    let mut first = String::new();
    if reader.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        headers.push(line);
    }
    Ok(Some((
        first.trim_end_matches(['\r', '\n']).to_string(),
        headers,
    )))
}

fn header<'a>(headers: &'a [String], name: &str) -> Option<&'a str> {
    headers.iter().find_map(|h| {
        let (n, v) = h.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads a body framed by Content-Length or chunked encoding (kept as sent).
fn read_body(reader: &mut impl BufRead, headers: &[String]) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if header(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            body.extend_from_slice(size.as_bytes());
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            if n == 0 {
                return Ok(body);
            }
        }
    }
    let length: usize = header(headers, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    body.resize(length, 0);
    reader.read_exact(&mut body)?;
    Ok(body)
}

/// `head` with its Connection header replaced by `Connection: close`.
fn write_head(out: &mut impl Write, first: &str, headers: &[String]) -> std::io::Result<()> {
    write!(out, "{first}\r\n")?;
    for h in headers {
        let name = h.split_once(':').map_or("", |(n, _)| n.trim());
        if !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive") {
            write!(out, "{h}\r\n")?;
        }
    }
    write!(out, "Connection: close\r\n\r\n")
}

fn exchange(
    client: TcpStream,
    upstream: u16,
    rule: &Rule,
    injected: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let Some((line, headers)) = read_head(&mut reader)? else {
        return Ok(());
    };
    let body = read_body(&mut reader, &headers)?;
    let fault = rule(&Request {
        line: &line,
        headers: &headers,
        body: &body,
    });
    let mut client = client;
    if let Fault::Answer(status, json) = &fault {
        injected.lock().unwrap().push(line.clone());
        write!(
            client,
            "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        )?;
        return client.flush();
    }
    let mut server = TcpStream::connect(("127.0.0.1", upstream))?;
    write_head(&mut server, &line, &headers)?;
    server.write_all(&body)?;
    server.flush()?;
    let mut answer = BufReader::new(server);
    let Some((status, response_headers)) = read_head(&mut answer)? else {
        return Ok(());
    };
    let response_body = if line.starts_with("HEAD ") {
        Vec::new()
    } else {
        read_body(&mut answer, &response_headers)?
    };
    if let Fault::LoseReply = fault {
        // The server did the work; the client never hears of it.
        injected.lock().unwrap().push(line);
        return client.shutdown(std::net::Shutdown::Both);
    }
    write_head(&mut client, &status, &response_headers)?;
    client.write_all(&response_body)?;
    client.flush()
}
