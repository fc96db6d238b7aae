//! The workloads: deterministic generators of `OrderCreated` v1 events (the
//! orders pipeline's), of `SessionSummarized` v1 events (larger and deeper,
//! for benchmarks) and the customers table both join with. The demo, the
//! tests and the benchmarks all use them, so their output for a given seed
//! never changes.
//!
//! Each generated line comes with what its pipeline must do with it
//! ([`Expected`]): write it out, send it to review, or send it to the DLQ
//! for a given reason. Invalid lines cover every bad-input class the engine
//! promises to handle.

mod sessions;

use std::fmt::Write as _;
use std::io::Write;

/// Size of the customer id space events draw from.
const CUSTOMER_POOL: u64 = 100_000;
/// One customer in this many is missing from the customers table.
const MISSING_EVERY: u64 = 100;
/// Events are spread over this many days from 2026-11-01.
const DAYS: i64 = 7;
/// 2026-11-01T00:00:00Z in Unix seconds.
const START: i64 = 1_793_491_200;

/// Ways a generated line is invalid, each with the rule that must reject it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InvalidClass {
    /// Not JSON at all.
    NotJson,
    /// JSON cut off half-way.
    Truncated,
    /// `total` is the string `"12.5x"`.
    WrongType,
    /// `customer_id` is missing.
    MissingRequired,
    /// An item has `qty` 0.
    OutOfRange,
    /// `channel` is `"fax"`.
    EnumViolation,
    /// `customer_id` does not match `^C[0-9]{6}$`.
    PatternViolation,
    /// `occurred_at` is not a date-time.
    BadTimestamp,
    /// The line holds bytes that are not UTF-8.
    InvalidUtf8,
    /// `occurred_at` is in 2099 (a data-quality rule, not the schema).
    FutureTimestamp,
    /// A 10 MB line.
    HugeLine,
    /// JSON nested 10,000 deep.
    DeepNesting,
}

impl InvalidClass {
    /// Classes drawn at the invalid ratio (the huge and deep lines appear once each).
    pub const COMMON: [InvalidClass; 10] = [
        InvalidClass::NotJson,
        InvalidClass::Truncated,
        InvalidClass::WrongType,
        InvalidClass::MissingRequired,
        InvalidClass::OutOfRange,
        InvalidClass::EnumViolation,
        InvalidClass::PatternViolation,
        InvalidClass::BadTimestamp,
        InvalidClass::InvalidUtf8,
        InvalidClass::FutureTimestamp,
    ];

    /// The rule the orders pipeline reports for this class.
    pub fn expected_rule(self) -> &'static str {
        match self {
            InvalidClass::NotJson | InvalidClass::Truncated => "json",
            InvalidClass::WrongType => "type",
            InvalidClass::MissingRequired => "required",
            InvalidClass::OutOfRange => "minimum",
            InvalidClass::EnumViolation => "enum",
            InvalidClass::PatternViolation => "pattern",
            InvalidClass::BadTimestamp => "format",
            InvalidClass::InvalidUtf8 => "utf8",
            InvalidClass::FutureTimestamp => "not_in_future",
            InvalidClass::HugeLine => "size",
            InvalidClass::DeepNesting => "depth",
        }
    }
}

/// Why a valid line goes to review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReviewClass {
    /// The customer is not in the customers table.
    UnknownCustomer,
    /// The total is implausibly large (a `warn` rule).
    SuspiciousTotal,
}

/// What the orders pipeline must do with a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// Written to the output.
    Output {
        /// The event's id.
        event_id: String,
    },
    /// Sent to the review queue.
    Review {
        /// The event's id.
        event_id: String,
        /// Why.
        class: ReviewClass,
    },
    /// Sent to the DLQ.
    Dlq(InvalidClass),
}

/// Which events to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workload {
    /// `OrderCreated` v1, about 450 bytes, two levels deep (`pipelines/orders.yaml`).
    #[default]
    Orders,
    /// `SessionSummarized` v1, about 2 KB, five levels deep (`benches/pipelines/sessions.yaml`).
    Sessions,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "orders" => Ok(Workload::Orders),
            "sessions" => Ok(Workload::Sessions),
            other => Err(format!(
                "unknown workload {other:?}; use orders or sessions"
            )),
        }
    }
}

/// Workload parameters.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadSpec {
    /// Which events.
    pub workload: Workload,
    /// Number of events (lines).
    pub events: u64,
    /// Fraction of invalid lines, 0–1.
    pub invalid_ratio: f64,
    /// Seed; the same seed gives the same bytes.
    pub seed: u64,
}

/// SplitMix64: tiny, fast, and stable across versions (unlike library RNGs).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0x0fff,
            ((b >> 48) & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }
}

/// Whether customer number `n` is in the customers table.
pub fn customer_known(n: u64) -> bool {
    n % MISSING_EVERY != 42
}

/// The generator: call [`Generator::next_line`] `events` times.
#[derive(Debug, Clone)]
pub struct Generator {
    spec: WorkloadSpec,
    rng: Rng,
    index: u64,
}

const CURRENCIES: [&str; 5] = ["USD", "EUR", "GBP", "JPY", "CAD"];
const CHANNELS: [&str; 3] = ["web", "mobile", "store"];
const COUNTRIES: [&str; 8] = ["US", "GB", "DE", "FR", "JP", "CA", "NL", "ES"];

struct Order {
    event_id: String,
    order_id: String,
    occurred_at: String,
    customer: u64,
    currency: String,
    channel: &'static str,
    items: Vec<(u32, u32, f64)>,
    total: f64,
    shipping: Option<(&'static str, u32)>,
}

impl Generator {
    /// A generator for `spec`.
    pub fn new(spec: WorkloadSpec) -> Self {
        Generator {
            spec,
            rng: Rng(spec.seed ^ 0x05ee_d0f0_de75_u64),
            index: 0,
        }
    }

    fn order(&mut self) -> Order {
        let event_id = self.rng.uuid();
        let order_id = self.rng.uuid();
        let at = START * 1000 + self.rng.below((DAYS * 86_400_000) as u64) as i64;
        let occurred_at = chrono::DateTime::from_timestamp_millis(at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let customer = self.rng.below(CUSTOMER_POOL);
        let mut currency = CURRENCIES[self.rng.below(5) as usize].to_string();
        if self.rng.chance(0.1) {
            currency = currency.to_lowercase();
        }
        let channel = CHANNELS[self.rng.below(3) as usize];
        let n = 1 + self.rng.below(5) as usize;
        let items: Vec<(u32, u32, f64)> = (0..n)
            .map(|_| {
                let sku = self.rng.below(100_000) as u32;
                let qty = 1 + self.rng.below(4) as u32;
                let cents = 199 + self.rng.below(20_000);
                (sku, qty, cents as f64 / 100.0)
            })
            .collect();
        let total_cents: u64 = items
            .iter()
            .map(|(_, q, p)| u64::from(*q) * (p * 100.0).round() as u64)
            .sum();
        let shipping = if self.rng.chance(0.9) {
            Some((
                COUNTRIES[self.rng.below(8) as usize],
                self.rng.below(100_000) as u32,
            ))
        } else {
            None
        };
        Order {
            event_id,
            order_id,
            occurred_at,
            customer,
            currency,
            channel,
            items,
            total: total_cents as f64 / 100.0,
            shipping,
        }
    }

    /// Appends the next line (without newline) to `out` and says what must become of it.
    pub fn next_line(&mut self, out: &mut Vec<u8>) -> Expected {
        let i = self.index;
        self.index += 1;
        if self.spec.workload == Workload::Sessions {
            return sessions::next_line(&mut self.rng, self.spec.invalid_ratio, i, out);
        }
        let mut order = self.order();
        let n = self.spec.events;
        let class = if self.spec.invalid_ratio > 0.0 && n >= 100 && i == n / 3 {
            Some(InvalidClass::HugeLine)
        } else if self.spec.invalid_ratio > 0.0 && n >= 100 && i == 2 * n / 3 {
            Some(InvalidClass::DeepNesting)
        } else if self.rng.chance(self.spec.invalid_ratio) {
            Some(InvalidClass::COMMON[self.rng.below(InvalidClass::COMMON.len() as u64) as usize])
        } else {
            None
        };
        let suspicious = class.is_none() && self.rng.chance(0.002);
        if suspicious {
            order.total += 75_000.0;
        }
        let mut extra = String::new();
        match class {
            Some(InvalidClass::NotJson) => {
                out.extend_from_slice(format!("this is not json, line {}", i + 1).as_bytes());
                return Expected::Dlq(InvalidClass::NotJson);
            }
            Some(InvalidClass::FutureTimestamp) => {
                order.occurred_at = order.occurred_at.replacen("2026", "2099", 1)
            }
            Some(InvalidClass::HugeLine) => {
                extra = format!(",\"notes\":\"{}\"", "x".repeat(10 << 20));
            }
            Some(InvalidClass::DeepNesting) => {
                extra = format!(",\"meta\":{}{}", "[".repeat(10_000), "]".repeat(10_000));
            }
            _ => {}
        }
        let start = out.len();
        write_order(out, &order, class, &extra);
        if class == Some(InvalidClass::Truncated) {
            let keep = (out.len() - start) / 2;
            out.truncate(start + keep);
        }
        match class {
            Some(c) => Expected::Dlq(c),
            None if suspicious => Expected::Review {
                event_id: order.event_id,
                class: ReviewClass::SuspiciousTotal,
            },
            None if !customer_known(order.customer) => Expected::Review {
                event_id: order.event_id,
                class: ReviewClass::UnknownCustomer,
            },
            None => Expected::Output {
                event_id: order.event_id,
            },
        }
    }
}

fn write_order(out: &mut Vec<u8>, o: &Order, class: Option<InvalidClass>, extra: &str) {
    let mut s = String::with_capacity(512);
    let _ = write!(
        s,
        "{{\"event_id\":\"{}\",\"event_type\":\"OrderCreated\",",
        o.event_id
    );
    let occurred = if class == Some(InvalidClass::BadTimestamp) {
        "2026-13-45T99:61:00Z"
    } else {
        &o.occurred_at
    };
    let _ = write!(
        s,
        "\"occurred_at\":\"{occurred}\",\"order_id\":\"{}\",",
        o.order_id
    );
    match class {
        Some(InvalidClass::MissingRequired) => {}
        Some(InvalidClass::PatternViolation) => s.push_str("\"customer_id\":\"X12345\","),
        _ => {
            let _ = write!(s, "\"customer_id\":\"C{:06}\",", o.customer);
        }
    }
    let channel = if class == Some(InvalidClass::EnumViolation) {
        "fax"
    } else {
        o.channel
    };
    let _ = write!(
        s,
        "\"currency\":\"{}\",\"channel\":\"{channel}\",\"items\":[",
        o.currency
    );
    for (k, (sku, qty, price)) in o.items.iter().enumerate() {
        let qty = if k == 0 && class == Some(InvalidClass::OutOfRange) {
            0
        } else {
            *qty
        };
        if k > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"sku\":\"SKU-{sku:05}\",\"qty\":{qty},\"unit_price\":{price}}}"
        );
    }
    s.push_str("],");
    if class == Some(InvalidClass::WrongType) {
        s.push_str("\"total\":\"12.5x\"");
    } else {
        let _ = write!(s, "\"total\":{}", o.total);
    }
    out.extend_from_slice(s.as_bytes());
    if let Some((country, postal)) = o.shipping.or(if class == Some(InvalidClass::InvalidUtf8) {
        Some(("US", 94107))
    } else {
        None
    }) {
        out.extend_from_slice(
            format!(",\"shipping\":{{\"country\":\"{country}\",\"postal_code\":\"").as_bytes(),
        );
        if class == Some(InvalidClass::InvalidUtf8) {
            out.extend_from_slice(b"94\xff\xfe07");
        } else {
            out.extend_from_slice(format!("{postal:05}").as_bytes());
        }
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(extra.as_bytes());
    out.push(b'}');
}

/// The events one at a time: the bytes of each line (without its newline) and what must become of it.
pub fn events(spec: WorkloadSpec) -> impl Iterator<Item = (Vec<u8>, Expected)> {
    let mut generator = Generator::new(spec);
    (0..spec.events).map(move |_| {
        let mut line = Vec::with_capacity(512);
        let expected = generator.next_line(&mut line);
        (line, expected)
    })
}

/// Writes `spec.events` lines to `out`; returns what must become of each.
pub fn write_events(spec: WorkloadSpec, out: &mut impl Write) -> std::io::Result<Vec<Expected>> {
    let mut expected = Vec::with_capacity(spec.events as usize);
    stream_events(spec, out, |e| expected.push(e))?;
    Ok(expected)
}

/// Writes `spec.events` lines to `out`, handing what must become of each
/// to `each` as it goes: memory stays flat whatever the count.
pub fn stream_events(
    spec: WorkloadSpec,
    out: &mut impl Write,
    mut each: impl FnMut(Expected),
) -> std::io::Result<()> {
    let mut generator = Generator::new(spec);
    let mut line = Vec::with_capacity(1024);
    for _ in 0..spec.events {
        line.clear();
        each(generator.next_line(&mut line));
        line.push(b'\n');
        out.write_all(&line)?;
    }
    Ok(())
}

/// Writes the customers table as CSV (`customer_id,segment,region,signup_date`):
/// 100,000 rows; about 1 % of the customers events reference are absent.
pub fn write_customers(seed: u64, out: &mut impl Write) -> std::io::Result<u64> {
    const SEGMENTS: [&str; 4] = ["consumer", "smb", "enterprise", "vip"];
    const REGIONS: [&str; 5] = ["na", "emea", "apac", "latam", "anz"];
    let mut rng = Rng(seed ^ 0xc057_0e45);
    writeln!(out, "customer_id,segment,region,signup_date")?;
    let missing = CUSTOMER_POOL / MISSING_EVERY;
    let mut rows = 0;
    for n in (0..CUSTOMER_POOL).chain(CUSTOMER_POOL..CUSTOMER_POOL + missing) {
        if n < CUSTOMER_POOL && !customer_known(n) {
            continue;
        }
        let day = 18_000 + rng.below(2_200) as i64;
        let date = chrono::DateTime::from_timestamp(day * 86_400, 0)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        writeln!(
            out,
            "C{n:06},{},{},{date}",
            SEGMENTS[rng.below(4) as usize],
            REGIONS[rng.below(5) as usize]
        )?;
        rows += 1;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let spec = WorkloadSpec {
            workload: Workload::Orders,
            events: 500,
            invalid_ratio: 0.05,
            seed: 7,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert_eq!(
            write_events(spec, &mut a).unwrap(),
            write_events(spec, &mut b).unwrap()
        );
        assert_eq!(a, b);
    }

    #[test]
    fn valid_events_are_about_400_bytes() {
        let spec = WorkloadSpec {
            workload: Workload::Orders,
            events: 2000,
            invalid_ratio: 0.0,
            seed: 1,
        };
        let mut out = Vec::new();
        write_events(spec, &mut out).unwrap();
        let avg = out.len() / 2000;
        assert!((300..=480).contains(&avg), "average line is {avg} bytes");
    }

    #[test]
    fn the_customers_table_has_100k_rows() {
        let mut out = Vec::new();
        assert_eq!(write_customers(1, &mut out).unwrap(), 100_000);
    }

    #[test]
    fn session_events_are_about_2_kb_and_follow_their_schema() {
        let spec = WorkloadSpec {
            workload: Workload::Sessions,
            events: 500,
            invalid_ratio: 0.0,
            seed: 3,
        };
        let schema: serde_json::Value = serde_json::from_str(include_str!(
            "../../../schemas/events/session_summarized.v1.schema.json"
        ))
        .unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut total = 0;
        for (line, expected) in events(spec) {
            total += line.len();
            assert!(!matches!(expected, Expected::Dlq(_)));
            let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert!(
                validator.is_valid(&value),
                "{}",
                String::from_utf8_lossy(&line)
            );
        }
        let avg = total / 500;
        assert!(
            (1_000..=3_000).contains(&avg),
            "average line is {avg} bytes"
        );
    }
}
