//! Stage 2: who is calling. The master key today; gateway keys later.

use super::App;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName};
use polyplex_types::GatewayError;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

/// The key the client presented: `Authorization: Bearer K`, or `x-api-key` / `api-key`.
pub fn presented_key(h: &HeaderMap) -> Option<&str> {
    static KEY_HEADERS: [HeaderName; 2] = [
        HeaderName::from_static("x-api-key"),
        HeaderName::from_static("api-key"),
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

pub fn check(app: &App, headers: &HeaderMap) -> Result<(), GatewayError> {
    let Some(master) = &app.master_key else {
        return Ok(());
    };
    let Some(key) = presented_key(headers) else {
        return Err(GatewayError::unauthorized(
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
        .with_code("missing_api_key"));
    };
    if bool::from(key.as_bytes().ct_eq(master.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(GatewayError::unauthorized(
            "Incorrect API key provided. Check the key you passed as the Bearer token.",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", "abc".parse().unwrap());
        assert_eq!(presented_key(&h), Some("abc"));
        h.insert("authorization", "Bearer plx-123".parse().unwrap());
        assert_eq!(presented_key(&h), Some("plx-123"));
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(presented_key(&h), None);
    }
}
