//! Stage 2: who is calling: the master key, a gateway key (`plx-...`), or,
//! without a master key (loopback only), anyone.

use super::App;
use crate::keys::{KeyEntry, Refusal};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName};
use polyplex_types::GatewayError;
use secrecy::ExposeSecret;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Who made a request (a request extension on every route that needs a key).
#[derive(Clone, Debug)]
pub enum Caller {
    /// The master key: every model, the admin API, no limits.
    Master,
    /// No master key is set and no gateway key was presented.
    Open,
    Key(Arc<KeyEntry>),
}

impl Caller {
    pub fn key(&self) -> Option<&Arc<KeyEntry>> {
        match self {
            Caller::Key(k) => Some(k),
            _ => None,
        }
    }

    /// Who owns what this caller keeps (cached answers, stored responses):
    /// `key:<id>`, `master` or `open`.
    pub fn owner(&self) -> String {
        match self {
            Caller::Key(k) => format!("key:{}", k.id()),
            Caller::Master => "master".to_string(),
            Caller::Open => "open".to_string(),
        }
    }

    /// May this caller use the admin API?
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Master | Caller::Open)
    }
}

/// The outcome of the in-memory check: decided, or a gateway key to look up
/// in the store (one made on another replica since the last reload).
pub enum Checked {
    Done(Result<Caller, GatewayError>),
    Lookup(String),
}

fn missing_key() -> GatewayError {
    GatewayError::unauthorized(
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    )
    .with_code("missing_api_key")
}

fn wrong_key() -> GatewayError {
    GatewayError::unauthorized(
        "Incorrect API key provided. Check the key you passed as the Bearer token.",
    )
}

/// A gateway key the store refused, as OpenAI would say it.
pub fn refused(r: Refusal) -> GatewayError {
    match r {
        Refusal::Unknown => wrong_key(),
        Refusal::Revoked => {
            GatewayError::unauthorized("This API key has been revoked. Ask for a new one.")
        }
        Refusal::Expired => {
            GatewayError::unauthorized("This API key has expired.").with_code("expired_api_key")
        }
    }
}

/// Stage 2 without waiting: the master key, a gateway key in memory, or a
/// key to look up.
pub fn check(app: &App, headers: &HeaderMap) -> Checked {
    let key = presented_key(headers);
    if let Some(k) = key.filter(|k| k.starts_with("plx-")) {
        return match app.keys.cached(k) {
            Some(r) => Checked::Done(r.map(Caller::Key).map_err(refused)),
            None if app.keys.store().is_some() => Checked::Lookup(k.to_string()),
            None => Checked::Done(Err(wrong_key())),
        };
    }
    let master = app.master_key.load();
    let Some(master) = master.as_deref() else {
        return Checked::Done(Ok(Caller::Open));
    };
    let Some(key) = key else {
        return Checked::Done(Err(missing_key()));
    };
    Checked::Done(
        if bool::from(key.as_bytes().ct_eq(master.expose_secret().as_bytes())) {
            Ok(Caller::Master)
        } else {
            Err(wrong_key())
        },
    )
}

/// The key the client presented: `Authorization: Bearer K`, or `x-api-key`
/// (Anthropic's SDKs) / `api-key` (Azure's) / `x-goog-api-key` (Google's).
pub fn presented_key(h: &HeaderMap) -> Option<&str> {
    static KEY_HEADERS: [HeaderName; 3] = [
        HeaderName::from_static("x-api-key"),
        HeaderName::from_static("api-key"),
        HeaderName::from_static("x-goog-api-key"),
    ];
    if let Some(v) = h.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let key = match v.split_once(char::is_whitespace) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            None if v.eq_ignore_ascii_case("bearer") => "",
            _ => v,
        };
        return Some(key).filter(|k| !k.is_empty());
    }
    KEY_HEADERS
        .iter()
        .find_map(|n| h.get(n).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        let mut g = HeaderMap::new();
        g.insert("x-goog-api-key", "goog".parse().unwrap());
        assert_eq!(presented_key(&g), Some("goog"));
        h.insert("x-api-key", "abc".parse().unwrap());
        assert_eq!(presented_key(&h), Some("abc"));
        h.insert("authorization", "Bearer plx-123".parse().unwrap());
        assert_eq!(presented_key(&h), Some("plx-123"));
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(presented_key(&h), None);
    }
}
