//! The sessions workload: `SessionSummarized` v1 events, about 2 KB each and
//! nested five levels deep (session → device → os, pages → events → target),
//! so that benchmarks do not tune to the flat, small orders events.

use std::fmt::Write as _;

use super::{CUSTOMER_POOL, DAYS, Expected, InvalidClass, ReviewClass, Rng, START, customer_known};

const KINDS: [&str; 3] = ["desktop", "mobile", "tablet"];
const SYSTEMS: [(&str, &str); 4] = [
    ("ios", "18.1"),
    ("android", "15"),
    ("windows", "11"),
    ("macos", "15.2"),
];
const COUNTRIES: [&str; 8] = ["US", "GB", "DE", "FR", "JP", "CA", "NL", "ES"];
const PLANS: [&str; 3] = ["free", "pro", "team"];
const TAGS: [&str; 6] = [
    "beta",
    "newsletter",
    "mobile-first",
    "returning",
    "trial",
    "vip",
];
const SECTIONS: [&str; 5] = ["catalog", "product", "cart", "checkout", "account"];
const ACTIONS: [&str; 4] = ["view", "click", "scroll", "input"];

/// Invalid classes this workload draws (the schema's rule names match the orders ones).
const INVALID: [InvalidClass; 5] = [
    InvalidClass::NotJson,
    InvalidClass::Truncated,
    InvalidClass::WrongType,
    InvalidClass::MissingRequired,
    InvalidClass::EnumViolation,
];

/// Appends session event number `index` to `out` and says what must become of it.
pub(super) fn next_line(
    rng: &mut Rng,
    invalid_ratio: f64,
    index: u64,
    out: &mut Vec<u8>,
) -> Expected {
    let class = rng
        .chance(invalid_ratio)
        .then(|| INVALID[rng.below(INVALID.len() as u64) as usize]);
    if class == Some(InvalidClass::NotJson) {
        let _ = write!(Line(out), "session line {} is not json", index + 1);
        return Expected::Dlq(InvalidClass::NotJson);
    }
    let event_id = rng.uuid();
    let start = out.len();
    let mut s = String::with_capacity(2048);
    let at = START * 1000 + rng.below((DAYS * 86_400_000) as u64) as i64;
    let occurred_at = timestamp(at);
    let _ = write!(
        s,
        "{{\"event_id\":\"{event_id}\",\"event_type\":\"SessionSummarized\",\"occurred_at\":\"{occurred_at}\","
    );
    let (os, version) = SYSTEMS[rng.below(SYSTEMS.len() as u64) as usize];
    let kind = if class == Some(InvalidClass::EnumViolation) {
        "fax"
    } else {
        KINDS[rng.below(3) as usize]
    };
    let duration = if class == Some(InvalidClass::WrongType) {
        "\"long\"".to_string()
    } else {
        (1_000 + rng.below(1_800_000)).to_string()
    };
    let _ = write!(
        s,
        "\"session\":{{\"id\":\"{}\",\"started_at\":\"{}\",\"duration_ms\":{duration},\
         \"device\":{{\"kind\":\"{kind}\",\"os\":{{\"name\":\"{os}\",\"version\":\"{version}\"}},\
         \"screen\":{{\"width\":{},\"height\":{}}}}},\
         \"geo\":{{\"country\":\"{}\",\"coords\":{{\"lat\":{:.4},\"lon\":{:.4}}}}}}},",
        rng.uuid(),
        timestamp(at - 1_800_000),
        320 + rng.below(3_000),
        480 + rng.below(1_800),
        COUNTRIES[rng.below(8) as usize],
        rng.below(18_000) as f64 / 100.0 - 90.0,
        rng.below(36_000) as f64 / 100.0 - 180.0,
    );
    let customer = rng.below(CUSTOMER_POOL);
    s.push_str("\"user\":{");
    if class != Some(InvalidClass::MissingRequired) {
        let _ = write!(s, "\"customer_id\":\"C{customer:06}\",");
    }
    let _ = write!(
        s,
        "\"traits\":{{\"plan\":\"{}\",\"tags\":[",
        PLANS[rng.below(3) as usize]
    );
    for t in 0..rng.below(4) {
        if t > 0 {
            s.push(',');
        }
        let _ = write!(s, "\"{}\"", TAGS[rng.below(6) as usize]);
    }
    s.push_str("]}},\"pages\":[");
    for p in 0..3 + rng.below(4) {
        if p > 0 {
            s.push(',');
        }
        let section = SECTIONS[rng.below(5) as usize];
        let _ = write!(
            s,
            "{{\"path\":\"/{section}/{}\",\"dwell_ms\":{},\"events\":[",
            rng.below(100_000),
            rng.below(120_000)
        );
        for e in 0..1 + rng.below(4) {
            if e > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                "{{\"action\":\"{}\",\"at_ms\":{},\"target\":{{\"id\":\"el-{}\",\"label\":\"{section} element {}\"}}}}",
                ACTIONS[rng.below(4) as usize],
                rng.below(60_000),
                rng.below(10_000),
                rng.below(1_000)
            );
        }
        s.push_str("]}");
    }
    s.push_str("]}");
    out.extend_from_slice(s.as_bytes());
    match class {
        Some(InvalidClass::Truncated) => {
            let keep = (out.len() - start) / 2;
            out.truncate(start + keep);
            Expected::Dlq(InvalidClass::Truncated)
        }
        Some(c) => Expected::Dlq(c),
        None if !customer_known(customer) => Expected::Review {
            event_id,
            class: ReviewClass::UnknownCustomer,
        },
        None => Expected::Output { event_id },
    }
}

fn timestamp(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// `fmt::Write` into a byte buffer.
struct Line<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Line<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}
