//! AWS Signature Version 4 for Bedrock requests (`aws-sigv4`), and its
//! check, which the mock upstream uses to hold polyplex to what AWS verifies.

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http::{HeaderMap, HeaderValue};
use polyplex_types::GatewayError;
use std::time::{Duration, SystemTime};

/// The service name Bedrock's runtime signs under.
pub const SERVICE: &str = "bedrock";

/// How long a signature stays valid, as AWS checks it.
const SKEW: Duration = Duration::from_secs(15 * 60);

/// Credentials and region for signing. `Debug` never shows the secret.
#[derive(Clone)]
pub struct SigV4 {
    pub region: String,
    credentials: Credentials,
}

impl std::fmt::Debug for SigV4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigV4")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl SigV4 {
    pub fn new(
        region: &str,
        access_key_id: &str,
        secret_access_key: &str,
        session_token: Option<&str>,
    ) -> SigV4 {
        SigV4 {
            region: region.to_string(),
            credentials: Credentials::new(
                access_key_id,
                secret_access_key,
                session_token.map(str::to_string),
                None,
                "polyplex-config",
            ),
        }
    }

    /// The secret parts (secret access key, session token), for redaction only.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.credentials.secret_access_key())
            .chain(self.credentials.session_token())
    }

    /// Signs a POST of `body` to `url`: adds `x-amz-date`, the session token
    /// if any, and `authorization`. `content-type` and `host` are signed;
    /// headers added after this call are sent unsigned.
    pub fn sign(
        &self,
        url: &str,
        headers: &mut HeaderMap,
        body: &[u8],
        time: SystemTime,
    ) -> Result<(), GatewayError> {
        let signature = |e: &dyn std::fmt::Display| {
            GatewayError::internal(format!("could not sign the Bedrock request: {e}"))
        };
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let out = signature_for(
            &self.credentials,
            &self.region,
            url,
            [("content-type", content_type.as_str())].into_iter(),
            body,
            time,
        )
        .map_err(|e| signature(&e))?;
        for (name, value) in out.0.headers() {
            let mut v = HeaderValue::try_from(value).map_err(|e| signature(&e))?;
            if name == "authorization" || name == "x-amz-security-token" {
                v.set_sensitive(true);
            }
            headers.insert(
                http::HeaderName::try_from(name).map_err(|e| signature(&e))?,
                v,
            );
        }
        Ok(())
    }
}

type Signed = (aws_sigv4::http_request::SigningInstructions, String);

fn signature_for<'a>(
    credentials: &Credentials,
    region: &str,
    url: &'a str,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    body: &'a [u8],
    time: SystemTime,
) -> Result<Signed, String> {
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let request = SignableRequest::new("POST", url, headers, SignableBody::Bytes(body))
        .map_err(|e| e.to_string())?;
    Ok(sign(request, &params)
        .map_err(|e| e.to_string())?
        .into_parts())
}

/// The parts of an `AWS4-HMAC-SHA256` authorization header.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(v: &str) -> Option<Authorization<'_>> {
    let rest = v.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let mut scope = credential?.split('/');
    let a = Authorization {
        access_key_id: scope.next()?,
        date: scope.next()?,
        region: scope.next()?,
        service: scope.next()?,
        signed_headers: signed?.split(';').collect(),
        signature: signature?,
    };
    (scope.next()? == "aws4_request").then_some(a)
}

/// `20231114T221320Z` → the time it names.
fn amz_date(s: &str) -> Option<SystemTime> {
    if s.len() != 16 || !s.is_char_boundary(8) {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        s.get(0..4)?,
        s.get(4..6)?,
        s.get(6..8)?,
        s.get(9..11)?,
        s.get(11..13)?,
        s.get(13..15)?
    );
    let t = aws_smithy_types::DateTime::from_str(
        &rfc3339,
        aws_smithy_types::date_time::Format::DateTime,
    )
    .ok()?;
    SystemTime::try_from(t).ok()
}

/// Checks a request's SigV4 signature the way AWS does: the scope names the
/// service and a date, the signing time is within 15 minutes of `now`, and
/// the signature over the signed headers, the path and the body matches the
/// one computed with `secret_access_key`. `url` is the request's URL as the
/// server received it, with scheme and host. Returns the access key id it
/// was signed with, or what is wrong (AWS's wording where it has one).
pub fn verify(
    url: &str,
    headers: &HeaderMap,
    body: &[u8],
    secret_for: impl Fn(&str) -> Option<String>,
    now: SystemTime,
) -> Result<String, String> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let auth = header("authorization")
        .and_then(parse_authorization)
        .ok_or("Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' (AWS4-HMAC-SHA256).")?;
    if auth.service != SERVICE {
        return Err(format!(
            "Credential should be scoped to correct service: '{SERVICE}'."
        ));
    }
    let date = header("x-amz-date").ok_or("Missing x-amz-date header.")?;
    let time = amz_date(date).ok_or("Invalid x-amz-date header.")?;
    if !date.starts_with(auth.date) {
        return Err("Credential should be scoped to a valid date.".into());
    }
    let skew = now
        .duration_since(time)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    if skew > SKEW {
        return Err(
            "Signature expired: the request time is more than 15 minutes from the server time."
                .into(),
        );
    }
    let secret = secret_for(auth.access_key_id)
        .ok_or("The security token included in the request is invalid.")?;
    let token = header("x-amz-security-token");
    let credentials = Credentials::new(
        auth.access_key_id,
        secret,
        token.map(str::to_string),
        None,
        "verify",
    );
    let signed: Vec<(&str, &str)> = auth
        .signed_headers
        .iter()
        .filter(|h| !matches!(**h, "host" | "x-amz-date" | "x-amz-security-token"))
        .map(|h| {
            Ok((
                *h,
                header(h).ok_or(format!("Signed header '{h}' is missing."))?,
            ))
        })
        .collect::<Result<_, String>>()?;
    let (_, expected) = signature_for(
        &credentials,
        auth.region,
        url,
        signed.into_iter(),
        body,
        time,
    )?;
    if expected != auth.signature {
        return Err("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.".into());
    }
    Ok(auth.access_key_id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:9/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";

    fn signed(token: Option<&str>, time: SystemTime) -> HeaderMap {
        let s = SigV4::new("us-west-2", "AKIDEXAMPLE", "secret", token);
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        s.sign(URL, &mut h, b"{\"messages\":[]}", time).unwrap();
        h
    }

    #[test]
    fn signs_and_verifies() {
        let now = SystemTime::now();
        let secret = |id: &str| (id == "AKIDEXAMPLE").then(|| "secret".to_string());
        let h = signed(None, now);
        let auth = h["authorization"].to_str().unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
        assert!(auth.contains("/us-west-2/bedrock/aws4_request"));
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-date"));
        assert!(h["authorization"].is_sensitive());
        assert_eq!(
            verify(URL, &h, b"{\"messages\":[]}", secret, now).unwrap(),
            "AKIDEXAMPLE"
        );
        // Another body, path, secret, time: refused.
        assert!(verify(URL, &h, b"{}", secret, now)
            .unwrap_err()
            .contains("does not match"));
        assert!(verify(
            &URL.replace("haiku", "opus"),
            &h,
            b"{\"messages\":[]}",
            secret,
            now
        )
        .is_err());
        assert!(verify(URL, &h, b"{\"messages\":[]}", |_| Some("other".into()), now).is_err());
        assert!(verify(URL, &h, b"{\"messages\":[]}", |_| None, now)
            .unwrap_err()
            .contains("security token"));
        let late = now + Duration::from_secs(16 * 60);
        assert!(verify(URL, &h, b"{\"messages\":[]}", secret, late)
            .unwrap_err()
            .contains("expired"));
        // A session token is sent and signed.
        let h = signed(Some("tok"), now);
        assert_eq!(h["x-amz-security-token"], "tok");
        assert!(verify(URL, &h, b"{\"messages\":[]}", secret, now).is_ok());
        let mut forged = h.clone();
        forged.insert("x-amz-security-token", HeaderValue::from_static("other"));
        assert!(verify(URL, &forged, b"{\"messages\":[]}", secret, now).is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let s = SigV4::new("eu-west-1", "AKID", "very-secret", Some("tok-secret"));
        let d = format!("{s:?}");
        assert!(d.contains("eu-west-1"));
        assert!(!d.contains("very-secret") && !d.contains("tok-secret"));
    }

    #[test]
    fn amz_dates() {
        let t = amz_date("20231114T221320Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_700_000_000
        );
        assert!(amz_date("2023-11-14").is_none());
        assert!(amz_date("2023111XT221320Z").is_none());
    }
}
