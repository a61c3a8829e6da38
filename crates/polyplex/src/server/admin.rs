//! The admin API (master key only): gateway keys and usage reports. JSON in
//! and out; a key's token appears in the answer that creates it and never
//! again.

use super::respond::ApiError;
use super::App;
use crate::budget::BudgetReset;
use crate::keys;
use crate::store::{self, GroupBy, KeyChanges, KeyRow};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use polyplex_types::GatewayError;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// A key as the admin API shows it: never the token, nor its hash.
pub fn key_json(k: &KeyRow) -> Value {
    json!({
        "id": k.id,
        "object": "gateway.key",
        "name": k.name,
        "key_hint": k.key_hint,
        "models": k.models,
        "rpm": k.rpm,
        "tpm": k.tpm,
        "max_concurrent": k.max_concurrent,
        "user_rpm": k.user_rpm,
        "user_tpm": k.user_tpm,
        "user_budget_usd": k.user_budget_usd,
        "budget_usd": k.budget_usd,
        "budget_reset": k.budget_reset,
        "spent_usd": crate::usage::rounded_cost(k.spent_usd),
        "budget_spent_usd": crate::usage::rounded_cost(k.budget_spent(store::unix_now())),
        "budget_resets_at": k.budget_reset.map(|r| r.end(store::unix_now())),
        "expires_at": k.expires_at,
        "metadata": k.metadata,
        "created_at": k.created_at,
        "revoked": k.revoked_at.is_some(),
        "revoked_at": k.revoked_at,
    })
}

fn store_error(e: store::StoreError) -> Response {
    tracing::error!(error = %e, "admin API: store error");
    ApiError(GatewayError::service_unavailable(
        "The key and usage store is unavailable; try again shortly.",
    ))
    .into_response()
}

fn no_store() -> Response {
    ApiError(GatewayError::service_unavailable(
        "No key and usage store is configured.",
    ))
    .into_response()
}

fn unknown_key(id: &str) -> Response {
    ApiError(GatewayError::not_found(format!("No key with id `{id}`.")).with_param("id"))
        .into_response()
}

fn bad(param: &str, why: impl std::fmt::Display) -> GatewayError {
    GatewayError::invalid_param(param, format!("Invalid `{param}`: {why}."))
}

fn object(body: &Bytes) -> Result<Map<String, Value>, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(GatewayError::invalid_request(
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(GatewayError::invalid_request(format!(
            "We could not parse the JSON body of your request ({e})."
        ))),
    }
}

/// A whole number ≥ 0, or null (`Some(None)`).
fn count(v: &Value, param: &str) -> Result<Option<u64>, GatewayError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(param, "must be a whole number of at least 0")),
        _ => Err(bad(param, "must be a whole number or null")),
    }
}

/// An amount of USD ≥ 0, or null (`None`).
fn usd(v: &Value, param: &str) -> Result<Option<f64>, GatewayError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_f64() {
            Some(x) if x >= 0.0 && x.is_finite() => Ok(Some(x)),
            _ => Err(bad(param, "must be a number of at least 0")),
        },
        _ => Err(bad(param, "must be a number of USD, or null")),
    }
}

/// A time as Unix seconds: a number, an RFC 3339 time, a date
/// (`YYYY-MM-DD`, midnight UTC), or a duration from now (`30d`, `12h`).
pub fn parse_time(s: &str, future: bool) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return store_secs(t);
    }
    if s.len() == 10 {
        if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")) {
            return store_secs(t);
        }
    }
    let d = humantime::parse_duration(s).ok()?;
    let now = std::time::SystemTime::now();
    store_secs(if future {
        now.checked_add(d)?
    } else {
        now.checked_sub(d)?
    })
}

fn store_secs(t: std::time::SystemTime) -> Option<i64> {
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

/// The settings in a create or update body; every field is checked and
/// named when wrong, and unknown fields are refused.
fn changes(m: &Map<String, Value>) -> Result<KeyChanges, GatewayError> {
    let mut c = KeyChanges::default();
    for (k, v) in m {
        match k.as_str() {
            "name" => match v {
                Value::String(s) if !s.trim().is_empty() && s.len() <= 200 => {
                    c.name = Some(s.trim().to_string());
                }
                _ => return Err(bad("name", "must be a non-empty string of at most 200 characters")),
            },
            "models" => match v {
                Value::Null => c.models = Some(None),
                Value::Array(a) => {
                    let list = a
                        .iter()
                        .map(|x| x.as_str().filter(|s| !s.is_empty()).map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| bad("models", "must be a list of model names"))?;
                    c.models = Some(Some(list));
                }
                _ => return Err(bad("models", "must be a list of model names, or null for every model")),
            },
            "rpm" => c.rpm = Some(count(v, "rpm")?),
            "tpm" => c.tpm = Some(count(v, "tpm")?),
            "max_concurrent" => c.max_concurrent = Some(count(v, "max_concurrent")?),
            "user_rpm" => c.user_rpm = Some(count(v, "user_rpm")?),
            "user_tpm" => c.user_tpm = Some(count(v, "user_tpm")?),
            "budget_usd" => c.budget_usd = Some(usd(v, "budget_usd")?),
            "user_budget_usd" => c.user_budget_usd = Some(usd(v, "user_budget_usd")?),
            "budget_reset" => {
                let wrong = || bad("budget_reset", format!("must be one of {}, or null", crate::budget::NAMES));
                c.budget_reset = Some(match v {
                    Value::Null => None,
                    Value::String(s) => Some(BudgetReset::parse(s).ok_or_else(wrong)?),
                    _ => return Err(wrong()),
                });
            }
            "expires_at" => {
                c.expires_at = Some(match v {
                    Value::Null => None,
                    Value::Number(n) => Some(
                        n.as_i64()
                            .ok_or_else(|| bad("expires_at", "must be Unix seconds"))?,
                    ),
                    Value::String(s) => Some(parse_time(s, true).ok_or_else(|| {
                        bad(
                            "expires_at",
                            "must be Unix seconds, an RFC 3339 time, a date or a duration such as `30d`",
                        )
                    })?),
                    _ => return Err(bad("expires_at", "must be a time or null")),
                });
            }
            "metadata" => {
                c.metadata = Some(match v {
                    Value::Null => None,
                    Value::Object(pairs) => {
                        polyplex_types::validate::check_metadata("metadata", pairs)?;
                        (!pairs.is_empty()).then(|| pairs.clone())
                    }
                    _ => return Err(bad("metadata", "must be an object of strings, or null")),
                });
            }
            other => {
                return Err(GatewayError::invalid_param(
                    other,
                    format!("Unrecognized field `{other}`. Keys take: name, models, rpm, tpm, max_concurrent, user_rpm, user_tpm, user_budget_usd, budget_usd, budget_reset, expires_at, metadata."),
                ))
            }
        }
    }
    Ok(c)
}

/// Creates a key from its settings; returns the row and the token.
pub async fn create(
    store: &store::Store,
    c: &KeyChanges,
) -> Result<(KeyRow, String), store::StoreError> {
    let token = keys::generate();
    let id = keys::new_id();
    let created_at = store::unix_now();
    let budget_reset = c.budget_reset.flatten();
    let row = KeyRow {
        name: c.name.clone().unwrap_or_else(|| id.clone()),
        id,
        key_hash: keys::hash(&token),
        key_hint: keys::hint(&token),
        models: c.models.clone().flatten(),
        rpm: c.rpm.flatten(),
        tpm: c.tpm.flatten(),
        max_concurrent: c.max_concurrent.flatten(),
        budget_usd: c.budget_usd.flatten(),
        spent_usd: 0.0,
        expires_at: c.expires_at.flatten(),
        created_at,
        revoked_at: None,
        budget_reset,
        period_start: budget_reset.map_or(0, |r| r.start(created_at)),
        period_spent_usd: 0.0,
        metadata: c.metadata.clone().flatten(),
        user_rpm: c.user_rpm.flatten(),
        user_tpm: c.user_tpm.flatten(),
        user_budget_usd: c.user_budget_usd.flatten(),
    };
    store.insert_key(&row).await?;
    Ok((row, token))
}

/// `POST /admin/keys`.
pub async fn create_key(State(app): State<App>, body: Bytes) -> Response {
    let c = match object(&body).and_then(|m| changes(&m)) {
        Ok(c) => c,
        Err(e) => return ApiError(e).into_response(),
    };
    let Some(store) = app.keys.store() else {
        return no_store();
    };
    match create(store, &c).await {
        Ok((row, token)) => {
            app.keys.upsert(row.clone());
            let mut v = key_json(&row);
            v["key"] = Value::String(token);
            Json(v).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// `GET /admin/keys`.
pub async fn list_keys(State(app): State<App>) -> Response {
    let Some(store) = app.keys.store() else {
        return no_store();
    };
    match store.keys().await {
        Ok(rows) => Json(json!({
            "object": "list",
            "data": rows.iter().map(|k| with_live_spend(&app, k)).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => store_error(e),
    }
}

/// A key with this node's spend not yet stored counted in.
fn with_live_spend(app: &App, k: &KeyRow) -> Value {
    let mut v = key_json(k);
    if let Some(e) = app.keys.by_id(&k.id) {
        v["spent_usd"] = crate::usage::cost_json(e.spent().max(k.spent_usd));
        let period = k.budget_spent(store::unix_now());
        v["budget_spent_usd"] = crate::usage::cost_json(e.budget_spent().max(period));
    }
    v
}

/// `GET /admin/keys/{id}`.
pub async fn get_key(State(app): State<App>, Path(id): Path<String>) -> Response {
    let Some(store) = app.keys.store() else {
        return no_store();
    };
    match store.key(&id).await {
        Ok(Some(k)) => Json(with_live_spend(&app, &k)).into_response(),
        Ok(None) => unknown_key(&id),
        Err(e) => store_error(e),
    }
}

/// `PATCH /admin/keys/{id}`: changes the given settings (null clears one).
pub async fn update_key(State(app): State<App>, Path(id): Path<String>, body: Bytes) -> Response {
    let c = match object(&body).and_then(|m| changes(&m)) {
        Ok(c) => c,
        Err(e) => return ApiError(e).into_response(),
    };
    let Some(store) = app.keys.store() else {
        return no_store();
    };
    match store.update_key(&id, &c).await {
        Ok(Some(k)) => {
            app.keys.upsert(k.clone());
            let budget_changed = c.budget_usd.is_some() || c.budget_reset.is_some();
            if let (Some(shared), true) = (&app.shared_limits, budget_changed) {
                if let Some(entry) = app.keys.by_id(&id) {
                    shared.reseed_spend(&entry).await;
                }
            }
            Json(with_live_spend(&app, &k)).into_response()
        }
        Ok(None) => unknown_key(&id),
        Err(e) => store_error(e),
    }
}

/// `DELETE /admin/keys/{id}`: revokes the key at once (its usage stays).
pub async fn revoke_key(State(app): State<App>, Path(id): Path<String>) -> Response {
    let Some(store) = app.keys.store() else {
        return no_store();
    };
    match store.revoke_key(&id).await {
        Ok(Some(k)) => {
            app.keys.upsert(k.clone());
            let mut v = with_live_spend(&app, &k);
            v["deleted"] = Value::Bool(true);
            Json(v).into_response()
        }
        Ok(None) => unknown_key(&id),
        Err(e) => store_error(e),
    }
}

/// `POST /admin/reload`: reads the configuration file again and applies
/// its providers, routes and strategy (see [`crate::reload`]); answers
/// what changed, or why nothing did (400, the running configuration kept).
pub async fn reload(State(app): State<App>) -> Response {
    match crate::reload::reload(&app).await {
        Ok(report) => Json(report.json()).into_response(),
        Err(e) => {
            let code = match e {
                crate::reload::Refused::NoFile => "no_config_file",
                crate::reload::Refused::Invalid(_) => "invalid_config",
            };
            ApiError(GatewayError::invalid_request(e.to_string()).with_code(code)).into_response()
        }
    }
}

/// A usage report as JSON rows named by their group; `names` maps key ids
/// to key names (for `by=key`).
pub fn report_json(
    by: &GroupBy,
    (since, until): (Option<i64>, Option<i64>),
    rows: &[store::UsageRow],
    names: &HashMap<String, String>,
) -> Value {
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert(by.name().into(), json!(r.group));
            if *by == GroupBy::Key {
                o.insert(
                    "key_name".into(),
                    json!(r.group.as_ref().and_then(|g| names.get(g))),
                );
            }
            o.insert("requests".into(), json!(r.requests));
            o.insert("errors".into(), json!(r.errors));
            o.insert("prompt_tokens".into(), json!(r.prompt_tokens));
            o.insert("completion_tokens".into(), json!(r.completion_tokens));
            o.insert(
                "total_tokens".into(),
                json!(r.prompt_tokens + r.completion_tokens),
            );
            o.insert("cached_tokens".into(), json!(r.cached_tokens));
            o.insert("cache_write_tokens".into(), json!(r.cache_write_tokens));
            o.insert("cost_usd".into(), crate::usage::cost_json(r.cost_usd));
            Value::Object(o)
        })
        .collect();
    let sum = |f: fn(&store::UsageRow) -> u64| rows.iter().map(f).sum::<u64>();
    let (p, c) = (sum(|r| r.prompt_tokens), sum(|r| r.completion_tokens));
    json!({
        "object": "list",
        "by": by.name(),
        "since": since,
        "until": until,
        "data": data,
        "total": {
            "requests": sum(|r| r.requests),
            "errors": sum(|r| r.errors),
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
            "cached_tokens": sum(|r| r.cached_tokens),
            "cache_write_tokens": sum(|r| r.cache_write_tokens),
            "cost_usd": crate::usage::cost_json(rows.iter().map(|r| r.cost_usd).sum()),
        },
    })
}

/// Parses `by` and `since` as the admin API and the CLI take them.
pub fn report_params(
    by: Option<&str>,
    since: Option<&str>,
) -> Result<(GroupBy, Option<i64>), GatewayError> {
    let by = match by {
        None | Some("") => GroupBy::Model,
        Some(b) => GroupBy::parse(b).ok_or_else(|| {
            bad(
                "by",
                "must be one of key, model, provider, endpoint, day, hour, user, or metadata.<key> (a metadata key: 1 to 64 characters, no quote or backslash)",
            )
        })?,
    };
    Ok((by, time_param("since", since)?))
}

/// A report's `since` or `until`: Unix seconds, an RFC 3339 time, a date
/// (midnight UTC) or a duration back from now.
fn time_param(param: &str, given: Option<&str>) -> Result<Option<i64>, GatewayError> {
    match given {
        None | Some("") => Ok(None),
        Some(s) => parse_time(s, false).map(Some).ok_or_else(|| {
            bad(
                param,
                "must be Unix seconds, an RFC 3339 time, a date (YYYY-MM-DD) or a duration such as `24h`",
            )
        }),
    }
}

/// Which records a report counts: one key's (`key=<id>`), those whose
/// metadata gives a key a value (`metadata.<key>=<value>`, each of them),
/// and those made before `until` ([`time_param`]).
pub fn report_only<'a>(
    key: Option<&str>,
    metadata: impl IntoIterator<Item = (&'a str, &'a str)>,
    until: Option<&str>,
) -> Result<store::Only, GatewayError> {
    let mut only = store::Only {
        key_id: key.map(str::to_string),
        until_ms: time_param("until", until)?.map(|u| u.saturating_mul(1000)),
        ..store::Only::default()
    };
    for (k, v) in metadata {
        if !store::metadata_key_ok(k) {
            return Err(bad(
                &format!("metadata.{k}"),
                "must name a metadata key of 1 to 64 characters, no quote or backslash",
            ));
        }
        only.metadata.push((k.to_string(), v.to_string()));
    }
    Ok(only)
}

/// [`report_only`] of a query's `key`, `metadata.<key>` and `until`.
fn query_only(q: &[(String, String)]) -> Result<store::Only, GatewayError> {
    let one = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let tagged = q
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?, v.as_str())));
    report_only(one("key"), tagged, one("until"))
}

/// `GET /admin/usage?by=key|model|provider|endpoint|day|hour|user|metadata.<key>&since=...&until=...`,
/// and `key=<id>` (one key's requests only) and `metadata.<key>=<value>`
/// (those tagged so only): every record this node has taken is written
/// first, so the report includes it.
pub async fn usage(State(app): State<App>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let one = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let (by, since) = match report_params(one("by"), one("since")) {
        Ok(p) => p,
        Err(e) => return ApiError(e).into_response(),
    };
    let only = match query_only(&q) {
        Ok(o) => o,
        Err(e) => return ApiError(e).into_response(),
    };
    let Some(store) = app.keys.store() else {
        return no_store();
    };
    app.recorder.flush().await;
    let since_ms = since.map_or(0, |s| s.saturating_mul(1000));
    let rows = match store.usage_report_of(by.clone(), since_ms, &only).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let names = if by == GroupBy::Key {
        match store.keys().await {
            Ok(ks) => ks.into_iter().map(|k| (k.id, k.name)).collect(),
            Err(e) => return store_error(e),
        }
    } else {
        HashMap::new()
    };
    let until = only.until_ms.map(|u| u / 1000);
    Json(report_json(&by, (since, until), &rows, &names)).into_response()
}

/// The most usage records one page holds, and how many it holds unless
/// `limit` says.
pub const MOST_RECORDS: usize = 1000;
pub const RECORDS: usize = 100;

/// A usage record as the admin API answers it.
pub fn record_json(r: &store::StoredRecord) -> Value {
    json!({
        "object": "usage.record",
        "request_id": r.request_id,
        "created_at": r.created_at_ms / 1000,
        "created_at_ms": r.created_at_ms,
        "key_id": r.key_id,
        "endpoint": r.endpoint,
        "requested_model": r.requested_model,
        "provider": r.provider,
        "model": r.model,
        "status": r.status,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
        "cached_tokens": r.cached_tokens,
        "cache_write_tokens": r.cache_write_tokens,
        "estimated": r.estimated,
        "cost_usd": crate::usage::cost_json(r.cost_usd),
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
        "attempts": r.attempts,
        "stream": r.stream,
        "user": r.user,
        "metadata": r.metadata,
    })
}

/// A page of usage records as JSON: `has_more` and, when there are more,
/// the `next` cursor (`after=` the next page).
pub fn records_json(mut records: Vec<store::StoredRecord>, limit: usize) -> Value {
    let has_more = records.len() > limit;
    records.truncate(limit);
    let next = records
        .last()
        .filter(|_| has_more)
        .map(|r| store::Cursor::after(r).text());
    json!({
        "object": "list",
        "data": records.iter().map(record_json).collect::<Vec<_>>(),
        "has_more": has_more,
        "next": next,
    })
}

/// `limit` and `after` of a page of records, as the admin API and the CLI
/// take them.
pub fn page_params(
    limit: Option<&str>,
    after: Option<&str>,
) -> Result<(usize, Option<store::Cursor>), GatewayError> {
    let limit = match limit {
        None | Some("") => RECORDS,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MOST_RECORDS).contains(n))
            .ok_or_else(|| {
                bad(
                    "limit",
                    format!("must be a whole number from 1 to {MOST_RECORDS}"),
                )
            })?,
    };
    let after = match after {
        None | Some("") => None,
        Some(a) => Some(
            store::Cursor::parse(a)
                .ok_or_else(|| bad("after", "must be the `next` of the page before"))?,
        ),
    };
    Ok((limit, after))
}

/// `GET /admin/usage/records?since=&until=&key=&metadata.<key>=<value>&limit=&after=`
/// — the usage records themselves, newest first, a page at a time — and
/// `GET /admin/usage/records/{request_id}`: the records of one request
/// (the `x-request-id` a client was answered with).
pub async fn usage_records(
    State(app): State<App>,
    uri: axum::http::Uri,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let one = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let request = uri
        .path()
        .strip_prefix("/admin/usage/records/")
        .filter(|r| !r.is_empty());
    let params = report_params(None, one("since")).and_then(|(_, since)| {
        let mut only = query_only(&q)?;
        only.request_id = request.map(str::to_string);
        let (limit, after) = page_params(one("limit"), one("after"))?;
        Ok((since, only, limit, after))
    });
    let (since, only, limit, after) = match params {
        Ok(p) => p,
        Err(e) => return ApiError(e).into_response(),
    };
    let Some(store) = app.keys.store() else {
        return no_store();
    };
    app.recorder.flush().await;
    let since_ms = since.map_or(0, |s| s.saturating_mul(1000));
    match store
        .usage_records(since_ms, &only, after.as_ref(), limit + 1)
        .await
    {
        Ok(records) if request.is_some() && records.is_empty() => ApiError(
            GatewayError::not_found(format!(
                "No usage record of request '{}'.",
                request.unwrap_or_default()
            ))
            .with_code("record_not_found"),
        )
        .into_response(),
        Ok(records) => Json(records_json(records, limit)).into_response(),
        Err(e) => store_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1700000000", true), Some(1_700_000_000));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", true),
            Some(1_700_000_000)
        );
        assert_eq!(parse_time("1970-01-02", false), Some(86_400));
        let now = store::unix_now();
        let later = parse_time("1h", true).unwrap();
        assert!((later - now - 3600).abs() <= 1);
        let before = parse_time("1d", false).unwrap();
        assert!((now - before - 86_400).abs() <= 1);
        assert_eq!(parse_time("soon", true), None);
    }

    #[test]
    fn settings_are_checked_by_name() {
        let m = |v: Value| v.as_object().unwrap().clone();
        let c = changes(&m(json!({"name": "ci", "models": ["gpt-4o"], "rpm": 10, "budget_usd": 1.5, "expires_at": null}))).unwrap();
        assert_eq!(c.name.as_deref(), Some("ci"));
        assert_eq!(c.rpm, Some(Some(10)));
        assert_eq!(c.expires_at, Some(None));
        for (body, param) in [
            (json!({"rpm": -1}), "rpm"),
            (json!({"rpm": "ten"}), "rpm"),
            (json!({"models": "gpt-4o"}), "models"),
            (json!({"budget_usd": -2}), "budget_usd"),
            (json!({"name": ""}), "name"),
            (json!({"expires_at": "whenever"}), "expires_at"),
            (json!({"colour": "red"}), "colour"),
        ] {
            let e = changes(&m(body)).unwrap_err();
            assert_eq!(e.status.as_u16(), 400);
            assert_eq!(e.param.as_deref(), Some(param));
        }
    }

    #[test]
    fn report_params_default_and_refuse() {
        assert_eq!(report_params(None, None).unwrap(), (GroupBy::Model, None));
        assert_eq!(
            report_params(Some("day"), Some("0")).unwrap(),
            (GroupBy::Day, Some(0))
        );
        assert_eq!(
            report_params(Some("week"), None)
                .unwrap_err()
                .param
                .as_deref(),
            Some("by")
        );
        assert_eq!(
            report_params(None, Some("x")).unwrap_err().param.as_deref(),
            Some("since")
        );
    }
}
