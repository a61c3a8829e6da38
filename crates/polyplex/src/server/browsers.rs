//! Requests from web pages: CORS for the origins `server.cors_origins`
//! allows (tower-http's `CorsLayer` answers the preflight and writes the
//! headers), and, on a gateway without a master key, a refusal of what a web
//! page must not do to it.
//!
//! With a master key every call needs a key, so any origin may call (as
//! OpenAI's own API allows; the default `["*"]`) and an origin not listed is
//! served without CORS headers (the browser keeps the answer from the page).
//! Without one, polyplex serves loopback only and asks for no key: a page
//! the developer visits could spend the providers' credits by posting to
//! `127.0.0.1:8484` (a cross-origin POST goes out without a preflight, and
//! DNS rebinding makes one same-origin). So then only loopback origins are
//! allowed unless others are listed, a request from any other origin is a
//! 403, and so is a `Host` that is not a loopback name — what Ollama and
//! Jupyter do on a local port.
//!
//! A request without `Origin` (the SDKs, curl, servers) costs one header
//! lookup with a master key; without one, a `Host` check too.

use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use polyplex_types::GatewayError;
use std::net::IpAddr;
use std::time::Duration;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer, ExposeHeaders};

/// The default allowed origins without a master key: pages served from
/// this machine, any port.
const LOOPBACK_ORIGINS: [&str; 3] = ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"];

/// The response headers a page's script may read: what the SDKs read
/// (request id, retry advice, rate limits) and polyplex's own.
const EXPOSED: [&str; 18] = [
    "x-request-id",
    "retry-after",
    "x-should-retry",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-polyplex-provider",
    "x-polyplex-model",
    "x-polyplex-attempts",
    "x-polyplex-cache",
    "x-polyplex-dropped-params",
    "x-polyplex-fallbacks",
    "x-polyplex-hedged",
    "x-polyplex-skipped",
    "openai-processing-ms",
];

/// One allowed origin: `*`, an exact origin, or one with any port (`:*`).
#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    Any,
    Exact(String),
    AnyPort(String),
}

impl Pattern {
    fn matches(&self, origin: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(o) => o.eq_ignore_ascii_case(origin),
            Pattern::AnyPort(base) => {
                let Some(rest) = origin
                    .get(..base.len())
                    .filter(|head| head.eq_ignore_ascii_case(base))
                    .map(|_| &origin[base.len()..])
                else {
                    return false;
                };
                rest.is_empty()
                    || rest
                        .strip_prefix(':')
                        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            }
        }
    }
}

/// Reads one `server.cors_origins` entry; the message names what is wrong.
pub fn parse_origin(entry: &str) -> Result<(), String> {
    pattern(entry).map(|_| ())
}

fn pattern(entry: &str) -> Result<Pattern, String> {
    if entry == "*" {
        return Ok(Pattern::Any);
    }
    let (scheme, rest) = entry
        .split_once("://")
        .ok_or_else(|| format!("`{entry}` is not an origin (scheme://host[:port], or \"*\")"))?;
    if !matches!(scheme, "http" | "https") {
        return Err(format!("`{entry}`: the scheme must be http or https"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "`{entry}` is not an origin: no path, query or user, just scheme://host[:port]"
        ));
    }
    Ok(match entry.strip_suffix(":*") {
        Some(base) => Pattern::AnyPort(base.to_string()),
        None => Pattern::Exact(entry.to_string()),
    })
}

/// How the gate treats requests from web pages (see the module docs).
#[derive(Clone)]
pub struct Browsers {
    patterns: Vec<Pattern>,
    /// Answers CORS for the allowed origins; `None`: none is allowed.
    cors: Option<CorsLayer>,
    /// No master key: unlisted origins and non-loopback hosts are refused.
    guard: bool,
}

impl Browsers {
    /// `origins`: `server.cors_origins` as configured (checked by the
    /// config), `None` for the default; `keyed`: a master key is set.
    pub fn new(origins: Option<&[String]>, keyed: bool) -> Self {
        let patterns: Vec<Pattern> = match origins {
            Some(list) => list.iter().filter_map(|o| pattern(o).ok()).collect(),
            None if keyed => vec![Pattern::Any],
            None => LOOPBACK_ORIGINS
                .iter()
                .filter_map(|o| pattern(o).ok())
                .collect(),
        };
        let cors = (!patterns.is_empty()).then(|| {
            // Only requests from an allowed origin reach the layer
            // ([`Browsers::cors_for`]): it names theirs back, or `*`.
            let allow = if patterns.contains(&Pattern::Any) {
                AllowOrigin::any()
            } else {
                AllowOrigin::mirror_request()
            };
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PATCH,
                    Method::DELETE,
                    Method::OPTIONS,
                ])
                // `*` does not cover `authorization`: the page's own list is
                // echoed (the SDK adds its `x-stainless-*` headers).
                .allow_headers(AllowHeaders::mirror_request())
                .expose_headers(ExposeHeaders::list(
                    EXPOSED.iter().map(|h| HeaderName::from_static(h)),
                ))
                .max_age(Duration::from_secs(7200))
        });
        Browsers {
            patterns,
            cors,
            guard: !keyed,
        }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .is_ok_and(|o| self.patterns.iter().any(|p| p.matches(o)))
    }

    /// The CORS layer for a request from an allowed origin.
    pub fn cors_for(&self, headers: &HeaderMap) -> Option<&CorsLayer> {
        let origin = headers.get(ORIGIN)?;
        self.cors.as_ref().filter(|_| self.allows(origin))
    }

    /// Why the gate must not serve this request, if it must not: only
    /// without a master key (module docs).
    pub fn refuse(&self, uri: &Uri, headers: &HeaderMap) -> Option<GatewayError> {
        if !self.guard {
            return None;
        }
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()));
        if let Some(h) = host.filter(|h| !loopback_host(h)) {
            return Some(
                GatewayError::forbidden(format!(
                    "This gateway runs without a master key and answers only requests to a loopback address; `Host: {}` is not one. Set auth.master_key to serve other names.",
                    h.chars().take(100).collect::<String>()
                ))
                .with_code("host_not_allowed"),
            );
        }
        let origin = headers.get(ORIGIN)?;
        if self.allows(origin) {
            return None;
        }
        Some(
            GatewayError::forbidden(format!(
                "This gateway runs without a master key, so web pages may call it only from the origins server.cors_origins lists (by default this machine's: http://localhost, 127.0.0.1, [::1]); `{}` is not one.",
                origin.to_str().unwrap_or("?").chars().take(100).collect::<String>()
            ))
            .with_code("origin_not_allowed"),
        )
    }
}

/// `localhost` (or a name under it), or a loopback IP, with any port.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name
            .get(name.len().saturating_sub(10)..)
            .is_some_and(|t| t.eq_ignore_ascii_case(".localhost"))
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn origins_are_read_and_matched() {
        assert!(parse_origin("*").is_ok());
        assert!(parse_origin("https://app.example.com").is_ok());
        assert!(parse_origin("http://localhost:*").is_ok());
        assert!(parse_origin("app.example.com").is_err());
        assert!(parse_origin("ftp://x").is_err());
        assert!(parse_origin("https://app.example.com/path").is_err());
        let p = pattern("http://localhost:*").unwrap();
        assert!(p.matches("http://localhost:3000"));
        assert!(p.matches("http://localhost"));
        assert!(!p.matches("http://localhost.evil.com"));
        assert!(!p.matches("http://localhost:3000x"));
        assert!(!p.matches("https://localhost:3000"));
        let p = pattern("https://app.example.com").unwrap();
        assert!(p.matches("https://APP.example.com"));
        assert!(!p.matches("https://app.example.com:8443"));
    }

    #[test]
    fn with_a_master_key_any_origin_gets_cors_and_nothing_is_refused() {
        let b = Browsers::new(None, true);
        let uri: Uri = "/v1/chat/completions".parse().unwrap();
        let h = headers(&[
            ("origin", "https://anywhere.example"),
            ("host", "gw.example.com"),
        ]);
        assert!(b.cors_for(&h).is_some());
        assert!(b.refuse(&uri, &h).is_none());
        // A list: others get no CORS, and are still served (they need a key).
        let b = Browsers::new(Some(&["https://app.example.com".to_string()]), true);
        assert!(b.cors_for(&h).is_none());
        assert!(b.refuse(&uri, &h).is_none());
        let ok = headers(&[("origin", "https://app.example.com")]);
        assert!(b.cors_for(&ok).is_some());
        // An empty list: no CORS at all.
        assert!(Browsers::new(Some(&[]), true).cors_for(&ok).is_none());
        assert!(b.cors_for(&headers(&[])).is_none());
    }

    #[test]
    fn without_a_master_key_only_this_machine_may_call() {
        let b = Browsers::new(None, false);
        let uri: Uri = "/v1/chat/completions".parse().unwrap();
        for host in [
            "127.0.0.1:8484",
            "localhost:8484",
            "[::1]:8484",
            "app.localhost",
            "localhost",
        ] {
            assert!(
                b.refuse(&uri, &headers(&[("host", host)])).is_none(),
                "{host}"
            );
        }
        let e = b
            .refuse(&uri, &headers(&[("host", "rebound.evil.com:8484")]))
            .unwrap();
        assert_eq!(
            (e.status.as_u16(), e.code.as_deref()),
            (403, Some("host_not_allowed"))
        );
        let page = headers(&[
            ("host", "127.0.0.1:8484"),
            ("origin", "http://localhost:5173"),
        ]);
        assert!(b.refuse(&uri, &page).is_none());
        assert!(b.cors_for(&page).is_some());
        let evil = headers(&[
            ("host", "127.0.0.1:8484"),
            ("origin", "https://evil.example"),
        ]);
        let e = b.refuse(&uri, &evil).unwrap();
        assert_eq!(e.code.as_deref(), Some("origin_not_allowed"));
        assert!(b.cors_for(&evil).is_none());
        // Listed, it may.
        let b = Browsers::new(Some(&["https://evil.example".to_string()]), false);
        assert!(b.refuse(&uri, &evil).is_none());
        // HTTP/2 names the host in the URI.
        let h2: Uri = "http://rebound.evil.com/v1/models".parse().unwrap();
        assert!(b.refuse(&h2, &headers(&[])).is_some());
    }
}
