//! The mock's Vertex AI: Gemini (`publishers/google/models/{m}:generateContent`,
//! `:streamGenerateContent?alt=sse`) and Claude (`publishers/anthropic/models/{m}:rawPredict`,
//! `:streamRawPredict`) under `/v1/projects/{p}/locations/{l}/`, and express
//! mode under `/v1/publishers/...` with an API key. Requests carry an access
//! token the mock's own OAuth endpoint issued (`POST /token`, the
//! service-account JWT grant, as `oauth2.googleapis.com/token`), or an API key.

use super::gemini::google_error;
use super::{anthropic, gemini, MockState};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Access tokens the mock issues start with this.
const TOKEN_PREFIX: &str = "ya29.polyplex-mock-";

/// `POST /token`: the JWT-bearer grant. The assertion must be a JWT whose
/// claims name an issuer, this endpoint as audience, the cloud-platform scope
/// and a future expiry (the mock cannot check the RSA signature: it does not
/// hold the public key).
pub(crate) async fn token(
    State(s): State<Arc<MockState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bad = |msg: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": msg})),
        )
            .into_response()
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if field("grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return bad("Invalid grant_type.");
    }
    let Some(assertion) = field("assertion") else {
        return bad("Missing assertion.");
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    let claims = (parts.len() == 3)
        .then(|| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1].trim_end_matches('='))
                .ok()
        })
        .flatten()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let Some(claims) = claims else {
        return bad("Invalid JWT.");
    };
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let audience = format!("http://{host}{}", uri.path());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let scoped = claims
        .get("scope")
        .and_then(Value::as_str)
        .is_some_and(|sc| {
            sc.split(' ')
                .any(|x| x == polyplex_providers::vertex::SCOPE)
        });
    if claims
        .get("iss")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
        || claims.get("aud").and_then(Value::as_str) != Some(audience.as_str())
        || claims
            .get("exp")
            .and_then(Value::as_i64)
            .is_none_or(|e| e <= now)
        || !scoped
    {
        return bad("Invalid JWT: iss, aud (this endpoint), scope (cloud-platform) and a future exp are required.");
    }
    let n = s.stats.tokens_issued.fetch_add(1, Ordering::Relaxed) + 1;
    Json(json!({"access_token": format!("{TOKEN_PREFIX}{n:06}"), "expires_in": 3599, "token_type": "Bearer"}))
        .into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer.is_some_and(|t| t.starts_with(TOKEN_PREFIX)) || headers.contains_key("x-goog-api-key")
}

async fn serve(
    s: Arc<MockState>,
    uri: &Uri,
    publisher: &str,
    rest: &str,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&headers) {
        return google_error(StatusCode::UNAUTHORIZED, "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.", "UNAUTHENTICATED");
    }
    let Some((model, method)) = rest.rsplit_once(':') else {
        return google_error(StatusCode::NOT_FOUND, "Method not found.", "NOT_FOUND");
    };
    match (publisher, method) {
        ("google", "predict") => predict(s, uri.path(), model, &headers, &body).await,
        ("google", _) => {
            gemini::serve(
                s,
                uri.path(),
                model,
                method,
                &query.unwrap_or_default(),
                headers,
                body,
            )
            .await
        }
        ("anthropic", "rawPredict") if model == "count-tokens" => {
            let req = serde_json::from_slice::<serde_json::Map<String, Value>>(&body);
            let Ok(req) = req.map_err(|_| ()).and_then(|r| {
                (r.get("model").is_some_and(Value::is_string)
                    && r.get("anthropic_version").and_then(Value::as_str)
                        == Some(polyplex_providers::vertex::ANTHROPIC_VERSION))
                .then_some(r)
                .ok_or(())
            }) else {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    "count-tokens takes the model and anthropic_version vertex-2023-10-16 in the body.",
                    "INVALID_ARGUMENT",
                );
            };
            s.record(uri.path(), &headers, &Value::Object(req.clone()));
            Json(json!({"input_tokens": anthropic::counted(&req)})).into_response()
        }
        ("anthropic", "rawPredict" | "streamRawPredict") => {
            let Ok(mut req) = serde_json::from_slice::<serde_json::Map<String, Value>>(&body)
            else {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid JSON payload.",
                    "INVALID_ARGUMENT",
                );
            };
            if req.get("anthropic_version").and_then(Value::as_str)
                != Some(polyplex_providers::vertex::ANTHROPIC_VERSION)
            {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    "anthropic_version: vertex-2023-10-16 is required.",
                    "INVALID_ARGUMENT",
                );
            }
            if req.contains_key("model") {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    "model: Extra inputs are not permitted (the model is in the URL).",
                    "INVALID_ARGUMENT",
                );
            }
            req.insert("model".into(), json!(model));
            let body = Bytes::from(Value::Object(req).to_string());
            anthropic::serve(s, uri.path(), &headers, &body).await
        }
        _ => google_error(StatusCode::NOT_FOUND, "Method not found.", "NOT_FOUND"),
    }
}

/// `/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{model}:{method}`
pub(crate) async fn project(
    State(s): State<Arc<MockState>>,
    Path((_project, _location, publisher, rest)): Path<(String, String, String, String)>,
    RawQuery(q): RawQuery,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(s, &uri, &publisher, &rest, q, headers, body).await
}

/// Express mode: `/v1/publishers/{publisher}/models/{model}:{method}`.
pub(crate) async fn express(
    State(s): State<Arc<MockState>>,
    Path((publisher, rest)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !headers.contains_key("x-goog-api-key") {
        return google_error(
            StatusCode::UNAUTHORIZED,
            "Express mode needs an API key.",
            "UNAUTHENTICATED",
        );
    }
    serve(s, &uri, &publisher, &rest, q, headers, body).await
}

/// `predict` for text embeddings: `instances` of `content`.
async fn predict(
    s: Arc<MockState>,
    path: &str,
    model: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let (req, _) = match super::admit_model(
        &s,
        path,
        headers,
        body,
        super::Shape::Google,
        Some(model),
    )
    .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let dims = req
        .get("parameters")
        .and_then(|p| p.get("outputDimensionality"))
        .and_then(Value::as_u64)
        .unwrap_or(16)
        .clamp(1, 4096) as usize;
    let mut predictions = Vec::new();
    for (i, inst) in req
        .get("instances")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(text) = inst.get("content").and_then(Value::as_str) else {
            return google_error(
                StatusCode::BAD_REQUEST,
                &format!("instances[{i}].content is required"),
                "INVALID_ARGUMENT",
            );
        };
        let tokens = super::reply::tokenize(text).len();
        predictions.push(
            json!({"embeddings": {"statistics": {"truncated": false, "token_count": tokens},
            "values": super::reply::embedding(text, dims)}}),
        );
    }
    Json(json!({"predictions": predictions})).into_response()
}
