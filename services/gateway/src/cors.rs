//! CORS per route: the gateway answers preflights itself (no key, no
//! limit, nothing sent upstream) and marks the answers to allowed origins.
//! When the origin is reflected, `Vary: Origin` is always added, so a cache
//! between the browser and the gateway never hands one origin's answer to
//! another.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use crate::routes::Cors;

/// Whether a request is a CORS preflight.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The method a preflight asks about.
pub fn requested_method(headers: &HeaderMap) -> Option<Method> {
    headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
}

fn allowed_origin<'a>(cors: &Cors, origin: &'a str) -> Option<&'a str> {
    cors.origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        .then_some(origin)
}

/// Why a preflight was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The origin is not listed.
    Origin,
    /// The method is not allowed.
    Method,
    /// A requested header is not allowed.
    Header(String),
}

/// The answer to a preflight for `cors`, or why not.
pub fn preflight(cors: &Cors, headers: &HeaderMap) -> Result<HeaderMap, Refusal> {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .and_then(|o| allowed_origin(cors, o))
        .ok_or(Refusal::Origin)?;
    let method = requested_method(headers).ok_or(Refusal::Method)?;
    if !cors.methods.is_empty() && !cors.methods.contains(&method) && !simple(&method) {
        return Err(Refusal::Method);
    }
    let requested: Vec<String> = headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    for name in &requested {
        if !cors.headers.iter().any(|h| h.as_str() == name) {
            return Err(Refusal::Header(name.clone()));
        }
    }
    let mut out = HeaderMap::new();
    allow_origin(cors, origin, &mut out);
    let methods = if cors.methods.is_empty() {
        method.to_string()
    } else {
        join(cors.methods.iter().map(Method::as_str))
    };
    put(&mut out, header::ACCESS_CONTROL_ALLOW_METHODS, &methods);
    if !requested.is_empty() {
        put(
            &mut out,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            &requested.join(", "),
        );
    }
    put(
        &mut out,
        header::ACCESS_CONTROL_MAX_AGE,
        &cors.max_age.as_secs().to_string(),
    );
    out.append(
        header::VARY,
        HeaderValue::from_static("Access-Control-Request-Method, Access-Control-Request-Headers"),
    );
    Ok(out)
}

/// The status of a preflight answer.
pub const PREFLIGHT_STATUS: StatusCode = StatusCode::NO_CONTENT;

/// Marks a response (the upstream's or the gateway's own refusal) to a
/// cross-origin request from an allowed `origin`.
pub fn decorate(cors: &Cors, origin: &HeaderValue, response: &mut HeaderMap) {
    let Some(origin) = origin.to_str().ok().and_then(|o| allowed_origin(cors, o)) else {
        return;
    };
    allow_origin(cors, origin, response);
    if !cors.expose.is_empty() {
        put(
            response,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            &join(cors.expose.iter().map(|h| h.as_str())),
        );
    }
}

fn allow_origin(cors: &Cors, origin: &str, out: &mut HeaderMap) {
    let any = cors.origins.iter().any(|o| o == "*") && !cors.credentials;
    if any {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    } else {
        put(out, header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        out.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    if cors.credentials {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

fn simple(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::POST)
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn put(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors {
            origins: origins.iter().map(|o| o.to_string()).collect(),
            methods: vec![Method::GET, Method::POST, Method::DELETE],
            headers: vec![header::CONTENT_TYPE, header::AUTHORIZATION],
            expose: vec![header::HeaderName::from_static("ratelimit")],
            max_age: Duration::from_secs(600),
            credentials,
        }
    }

    fn request(origin: &str, method: &str, headers: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            method.parse().unwrap(),
        );
        if !headers.is_empty() {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                headers.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_listed_origin_is_reflected_with_vary_and_others_are_refused() {
        let policy = cors(&["https://shop.example"], true);
        let ok = preflight(
            &policy,
            &request("https://shop.example", "DELETE", "Content-Type"),
        )
        .unwrap();
        assert_eq!(
            ok[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://shop.example"
        );
        assert_eq!(ok[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(
            ok[header::ACCESS_CONTROL_ALLOW_METHODS],
            "GET, POST, DELETE"
        );
        assert_eq!(ok[header::ACCESS_CONTROL_ALLOW_HEADERS], "content-type");
        assert_eq!(ok[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(ok.get_all(header::VARY).iter().any(|v| v == "Origin"));
        assert_eq!(
            preflight(&policy, &request("https://evil.example", "GET", "")),
            Err(Refusal::Origin)
        );
        assert_eq!(
            preflight(&policy, &request("https://shop.example", "PUT", "")),
            Err(Refusal::Method)
        );
        assert_eq!(
            preflight(&policy, &request("https://shop.example", "GET", "x-secret")),
            Err(Refusal::Header("x-secret".into()))
        );

        let mut response = HeaderMap::new();
        decorate(
            &policy,
            &HeaderValue::from_static("https://shop.example"),
            &mut response,
        );
        assert_eq!(
            response[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://shop.example"
        );
        assert_eq!(response[header::VARY], "Origin");
        assert_eq!(response[header::ACCESS_CONTROL_EXPOSE_HEADERS], "ratelimit");
    }

    #[test]
    fn any_origin_without_credentials_is_a_star() {
        let policy = cors(&["*"], false);
        let ok = preflight(&policy, &request("https://a.example", "GET", "")).unwrap();
        assert_eq!(ok[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
