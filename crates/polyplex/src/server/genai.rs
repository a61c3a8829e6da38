//! Google's Gemini API as a way in (`crate::genai`): `POST
//! /v1beta/models/{model}:generateContent`, `:streamGenerateContent`,
//! `:countTokens`, `:embedContent` and `:batchEmbedContents`, and `GET
//! /v1beta/models[/{model}]` (also under `/v1/models/`), for clients
//! written for Gemini: served as chat (or as embeddings) by any provider and
//! answered in Gemini's shape, or passed through to Gemini's API and Vertex
//! AI as written (`super::genai_native`).

use super::auth::Caller;
use super::handlers::{
    converted_request, parse_json, read_body, serve_as_chat, serve_converted, Call,
};
use super::respond::Served;
use super::{App, RequestId};
use crate::genai::{self, Echo, Method};
use crate::routing::Facts;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use polyplex_providers::Endpoint;
use polyplex_types::validate::ProviderPrefs;
use polyplex_types::{GatewayError, JsonMap, RequestBody};
use serde_json::{json, Value};

/// The model and method a path names: `/v1beta/models/{model}:{method}`
/// or `/v1/models/{model}:{method}` (the model percent-decoded).
fn target_of(path: &str) -> Option<(String, Method)> {
    let tail = match path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))
    {
        Some(tail) => std::borrow::Cow::Borrowed(tail),
        None => std::borrow::Cow::Owned(vertex_tail(path)?),
    };
    let tail = percent_encoding::percent_decode_str(&tail)
        .decode_utf8()
        .ok()?;
    genai::parse_target(&tail)
}

/// Vertex AI's form of a Gemini path — `/v1beta1/` or `/v1/`, then
/// `projects/{p}/locations/{l}/` (left out in Vertex AI's express mode),
/// then `publishers/{publisher}/models/{model}:{method}`, as Google's SDKs
/// write it with `vertexai=True` — as `{model}:{method}`, the model as the
/// gateway names it: Google's own bare (routed like any bare name), another
/// publisher's as `publisher/model`. The project and location are Google
/// Cloud's, not the gateway's: the deployments the gateway routes to say
/// where a request goes.
fn vertex_tail(path: &str) -> Option<String> {
    let (publisher, tail) = vertex_publisher(path)?;
    let tail = tail?;
    Some(if publisher == "google" {
        tail.to_string()
    } else {
        format!("{publisher}/{tail}")
    })
}

/// Claude on Vertex AI's path — `.../publishers/anthropic/models/{model}:rawPredict`
/// (or `:streamRawPredict`), as Anthropic's SDK (`AnthropicVertex`) writes
/// a Messages request — the model (percent-decoded), and whether it is the
/// count-tokens method (`models/count-tokens:rawPredict`, the model in the
/// body).
fn claude_on_vertex(path: &str) -> Option<(String, bool)> {
    let (publisher, tail) = vertex_publisher(path)?;
    let (model, method) = tail?.rsplit_once(':')?;
    if publisher != "anthropic" || !matches!(method, "rawPredict" | "streamRawPredict") {
        return None;
    }
    let model = percent_encoding::percent_decode_str(model)
        .decode_utf8()
        .ok()?
        .into_owned();
    let count = model == "count-tokens";
    Some((model, count))
}

/// Serves Claude on Vertex AI's path as the Messages API (`POST
/// /v1/messages`, or its count_tokens): the body is Anthropic's, with the
/// model from the path (a bare name, routed like any: Anthropic's API,
/// Vertex AI or Bedrock serve it) and Vertex AI's `anthropic_version` left
/// out.
async fn messages_on_vertex(
    app: App,
    rid: RequestId,
    caller: Caller,
    req: Request,
    model: String,
    count: bool,
) -> Response {
    let (parts, body) = req.into_parts();
    let headers = parts.headers.clone();
    let text = match read_body(&app, Request::from_parts(parts, body)).await {
        Ok(t) => t,
        Err(e) => {
            let echo = crate::messages::Echo {
                id: String::new(),
                model,
            };
            let resp = super::respond::ApiError(e).into_response();
            return super::respond::messages_answer(resp, echo, rid.0.clone()).await;
        }
    };
    // (A body that is not a JSON object goes on as it is, to be refused
    // in Anthropic's shape.)
    let body = match parse_json(&text) {
        Ok(mut tree) => {
            tree.remove("anthropic_version");
            if !count {
                tree.insert("model".into(), Value::String(model));
            }
            // An object of JSON values always encodes.
            serde_json::to_vec(&tree).unwrap_or_default().into()
        }
        Err(_) => text,
    };
    let inner = super::handlers::converted_post(headers, body);
    if count {
        super::handlers::count_tokens(State(app), Extension(caller), inner).await
    } else {
        super::handlers::messages(State(app), Extension(rid), Extension(caller), inner).await
    }
}

/// A Vertex AI path's publisher and what follows its `models/` (None for
/// the `.../models` list itself).
fn vertex_publisher(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path
        .strip_prefix("/v1beta1/")
        .or_else(|| path.strip_prefix("/v1/"))?;
    let rest = match rest.strip_prefix("projects/") {
        Some(r) => {
            let (_project, r) = r.split_once('/')?;
            r.strip_prefix("locations/")?.split_once('/')?.1
        }
        None => rest,
    };
    let rest = rest.strip_prefix("publishers/")?;
    let (publisher, tail) = match rest.split_once("/models/") {
        Some((p, t)) => (p, Some(Some(t).filter(|t| !t.is_empty())?)),
        None => (rest.strip_suffix("/models")?, None),
    };
    if publisher.is_empty() || publisher.contains('/') {
        return None;
    }
    Some((publisher, tail))
}

/// Whether a path is in Vertex AI's form (see [`vertex_tail`]).
pub fn is_vertex_path(path: &str) -> bool {
    path.starts_with("/v1beta1/")
        || path.starts_with("/v1/projects/")
        || path.starts_with("/v1/publishers/")
}

/// Whether a path is one of Gemini's, whose refusals are in Google's shape.
pub fn is_gemini_path(path: &str) -> bool {
    path.starts_with("/v1beta/")
        || (path.starts_with("/v1/models/") && path.contains(':'))
        || is_vertex_path(path)
}

/// Google's API also takes the key as `?key=`: moved into the
/// `x-goog-api-key` header when no header carries one, so the gate reads
/// it like any other (and it is not logged with the URL's query).
pub fn key_from_query(req: &mut Request) {
    if super::auth::presented_key(req.headers()).is_some() {
        return;
    }
    let Some(key) = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("key="))
            .and_then(|k| percent_encoding::percent_decode_str(k).decode_utf8().ok())
            .map(|k| k.into_owned())
    }) else {
        return;
    };
    if let Ok(mut v) = axum::http::HeaderValue::from_str(&key) {
        v.set_sensitive(true);
        req.headers_mut().insert("x-goog-api-key", v);
    }
}

/// A gateway error in Google's shape, with the status and headers
/// [`super::ApiError`] gives it.
pub fn google_error(e: GatewayError) -> Response {
    let status = e.status.as_u16();
    let body = genai::error_object(status, &json!({ "error": e.object() }));
    let (parts, _) = super::respond::ApiError(e).into_response().into_parts();
    Response::from_parts(
        parts,
        axum::body::Body::from(serde_json::to_vec(&body).unwrap_or_default()),
    )
}

pub async fn serve(
    State(app): State<App>,
    Extension(rid): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    if !is_gemini_path(req.uri().path()) {
        // `POST /v1/models/{id}` without a method: OpenAI's API has none.
        return super::respond::ApiError(GatewayError::method_not_allowed()).into_response();
    }
    if let Some((model, count)) = claude_on_vertex(req.uri().path()) {
        return messages_on_vertex(app, rid, caller, req, model, count).await;
    }
    let Some((model, method)) = target_of(req.uri().path()) else {
        return google_error(GatewayError::not_found(format!(
            "Method not found: {} (generateContent, streamGenerateContent, countTokens, embedContent and batchEmbedContents are served).",
            req.uri().path()
        )));
    };
    match method {
        Method::Count => {
            return count(&app, &caller, req, &model)
                .await
                .unwrap_or_else(google_error)
        }
        Method::Embed | Method::BatchEmbed => {
            return embed(app, rid, caller, req, &model, method == Method::BatchEmbed).await
        }
        Method::Generate | Method::Stream => {}
    }
    let stream = method == Method::Stream;
    let sse = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
    let mut call = Call::new(app.clone(), &rid, caller.clone(), Endpoint::Chat, "gemini");
    let mut echo = Echo {
        id: rid.0.to_string(),
        model: model.clone(),
        ..Echo::default()
    };
    let (headers, text, tree) = match converted_request(&mut call, &app, req).await {
        Ok(r) => r,
        Err(resp) => return super::respond::genai_answer(resp, echo, sse).await,
    };
    // What chat cannot carry is refused only if a deployment of another
    // protocol is to serve it (`super::genai_native`).
    let (chat, lossy) = match genai::to_chat(&tree, &model, stream) {
        Ok((chat, e)) => {
            echo = Echo { id: echo.id, ..e };
            (chat, None)
        }
        Err(e) => (genai::routing_form(&tree, &model, stream), Some(e)),
    };
    // A plan whose every deployment takes Gemini's API gets the request
    // as the client wrote it (`super::genai_native`).
    let chat = RequestBody::from_map(chat);
    if let Some(plan) = native_plan(&app, &caller, &model, &chat, stream) {
        // Its labels are its metadata pairs, within the same limits.
        let labels = tree.get("labels").and_then(Value::as_object);
        if let Some(Err(e)) = labels.map(|l| polyplex_types::validate::check_metadata("labels", l))
        {
            let resp = call.fail(&model, stream, e, &Served::default());
            return super::respond::genai_answer(resp, echo, sse).await;
        }
        // The response cache keeps Google's answers as they came, under
        // the request as written (and how it is streamed).
        let cache = app.cache().map(|_| {
            let mode = crate::cache::Mode::of(&headers);
            let how = match (stream, sse) {
                (false, _) => "unary",
                (true, true) => "sse",
                (true, false) => "array",
            };
            let endpoint = format!("gemini.native:{model}:{how}");
            let key = crate::cache::ResponseCache::key(&endpoint, &caller.owner(), &tree);
            (key, mode)
        });
        let asked = super::genai_native::Asked {
            model: &model,
            stream,
            sse,
            body: text,
            chat,
            metadata: labels,
            cache: cache.filter(|(_, mode)| *mode != crate::cache::Mode::Skip),
        };
        return super::genai_native::serve(&call, asked, &plan, &echo).await;
    }
    if let Some(e) = lossy {
        call.tag_from(&tree);
        let resp = call.fail(&model, stream, e, &Served::default());
        return super::respond::genai_answer(resp, echo, sse).await;
    }
    let bytes = chat.text().to_vec();
    let resp = serve_as_chat(app, rid, caller, "gemini", headers, bytes, None).await;
    super::respond::genai_answer(resp, echo, sse).await
}

/// The plan for `model` when every deployment in it takes Gemini's API
/// as it is (Gemini's own, Gemini models on Vertex AI); None otherwise
/// (or when there is none: the chat path says why).
fn native_plan(
    app: &App,
    caller: &Caller,
    model: &str,
    chat: &RequestBody,
    stream: bool,
) -> Option<crate::routing::Plan> {
    let plan = plan_for(app, caller, model, chat, stream).ok()?;
    (!plan.deployments.is_empty()
        && plan
            .deployments
            .iter()
            .all(crate::executor::speaks_generate))
    .then_some(plan)
}

/// The plan for `model` under the caller's key (a model the key may not
/// use refused), as the chat path would make it.
fn plan_for(
    app: &App,
    caller: &Caller,
    model: &str,
    chat: &RequestBody,
    stream: bool,
) -> Result<crate::routing::Plan, GatewayError> {
    let spec = caller.key().map(|k| k.spec());
    let access = spec.as_ref().and_then(|s| s.models.as_deref());
    if !app.router().may_reach(access, model) {
        return Err(crate::keys::model_forbidden(model));
    }
    let facts = Facts::new(chat, Endpoint::Chat, stream);
    app.router().plan(
        model,
        &[],
        &ProviderPrefs::default(),
        access,
        &facts,
        &mut rand::thread_rng(),
    )
}

/// `embedContent` / `batchEmbedContents`: served as an embeddings request
/// (one record as `gemini`), answered in Gemini's shape.
async fn embed(
    app: App,
    rid: RequestId,
    caller: Caller,
    req: Request,
    model: &str,
    batch: bool,
) -> Response {
    let mut call = Call::new(
        app.clone(),
        &rid,
        caller.clone(),
        Endpoint::Embeddings,
        "gemini",
    );
    let (headers, _, tree) = match converted_request(&mut call, &app, req).await {
        Ok(r) => r,
        Err(resp) => return super::respond::genai_embeddings_answer(resp, batch, &[]).await,
    };
    let (body, echo) = match genai::to_embeddings(&tree, model, batch) {
        Ok(x) => x,
        Err(e) => {
            let resp = call.fail(model, false, e, &Served::default());
            return super::respond::genai_embeddings_answer(resp, batch, &[]).await;
        }
    };
    let bytes = match serde_json::to_vec(&body) {
        Ok(b) => b,
        Err(e) => return google_error(GatewayError::internal(format!("gemini: {e}"))),
    };
    let resp = serve_converted(
        app,
        rid,
        caller,
        Endpoint::Embeddings,
        "gemini",
        headers,
        bytes,
        None,
    )
    .await;
    super::respond::genai_embeddings_answer(resp, batch, &echo.dropped).await
}

/// The context and output limits the catalog knows for a model name.
fn limits(app: &App, id: &str) -> Option<(u64, u64)> {
    let (ds, _) = app.router().resolve(id).ok()?;
    let d = ds.first()?;
    let m = app
        .router()
        .catalog()
        .model(d.upstream.catalog_id.as_deref()?, &d.model)?;
    Some((m.context, m.output))
}

/// `GET /v1beta/models` (and `GET /v1/models` from Google's SDKs): every
/// model this caller may use, as Gemini's `Model`s.
pub async fn list(app: &App, caller: &Caller) -> Response {
    let models: Vec<Value> = super::handlers::models_for(app, caller)
        .iter()
        .map(|(id, _)| genai::model_object(id, limits(app, id)))
        .collect();
    Json(json!({ "models": models })).into_response()
}

/// `GET /v1beta/models/{id}` (and `GET /v1/models/{id}` from Google's SDKs).
pub async fn get(app: &App, caller: &Caller, id: &str) -> Response {
    let id = id.strip_prefix("models/").unwrap_or(id);
    if let Err(e) = visible(app, caller, id) {
        return google_error(e);
    }
    Json(genai::model_object(id, limits(app, id))).into_response()
}

/// A model this caller may use and the gateway serves, or the 404 for it.
fn visible(app: &App, caller: &Caller, id: &str) -> Result<(), GatewayError> {
    let allowed = caller
        .key()
        .is_none_or(|k| app.router().may_reach(k.spec().models.as_deref(), id));
    if !allowed || !app.router().knows(id) {
        return Err(GatewayError::model_not_found(id));
    }
    Ok(())
}

/// The `GET` routes of `/v1beta/models`.
pub async fn models(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    match req.uri().path().strip_prefix("/v1beta/models") {
        Some("" | "/") => list(&app, &caller).await,
        Some(rest) => {
            let id = percent_encoding::percent_decode_str(rest.trim_start_matches('/'))
                .decode_utf8_lossy()
                .into_owned();
            get(&app, &caller, &id).await
        }
        None => google_error(GatewayError::not_found("Not found.")),
    }
}

/// `GET` on Vertex AI's paths: a publisher's models
/// (`.../publishers/{p}/models`, what google-genai's `models.list()` asks
/// with `vertexai=True`) or one of them (`.../publishers/{p}/models/{m}`),
/// as Vertex AI's `PublisherModel`s: the models this caller may use, each
/// named as [`vertex_tail`] reads it back (`publishers/google/models/{id}`
/// for a bare id, `publishers/{p}/models/{m}` for `p/m`).
pub async fn vertex_models(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    let path = percent_encoding::percent_decode_str(req.uri().path())
        .decode_utf8_lossy()
        .into_owned();
    match vertex_publisher(&path) {
        Some((publisher, None)) => {
            let mine = |id: &str| match id.split_once('/') {
                Some((p, _)) => publisher == "google" || p == publisher,
                None => publisher == "google",
            };
            let models: Vec<Value> = super::handlers::models_for(&app, &caller)
                .iter()
                .filter(|(id, _)| mine(id))
                .map(|(id, _)| genai::vertex_model_object(id))
                .collect();
            Json(json!({ "publisherModels": models })).into_response()
        }
        Some((_, Some(tail))) if !tail.contains(':') => {
            let Some(id) = vertex_tail(&path) else {
                return google_error(GatewayError::not_found("Not found."));
            };
            match visible(&app, &caller, &id) {
                Ok(()) => Json(genai::vertex_model_object(&id)).into_response(),
                Err(e) => google_error(e),
            }
        }
        _ => google_error(GatewayError::not_found(format!(
            "Not found: {path} (Vertex AI's publisher models are listed at .../publishers/{{publisher}}/models)."
        ))),
    }
}

/// Whether a request comes from one of Google's SDKs (which name
/// themselves in `x-goog-api-client`): `GET /v1/models` answers it in
/// Gemini's shape.
pub fn from_google_sdk(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key("x-goog-api-client")
}

/// `countTokens`: the prompt's tokens as the gateway counts them (OpenAI's
/// tokenizer and formula; an estimate for other providers' models), for a
/// model this caller may use. The body is a request's `contents` (and
/// the rest), or one `generateContentRequest`.
async fn count(
    app: &App,
    caller: &Caller,
    req: Request,
    model: &str,
) -> Result<Response, GatewayError> {
    let text = read_body(app, req).await?;
    let tree = parse_json(&text)?;
    let inner: JsonMap = match tree.get("generateContentRequest") {
        Some(Value::Object(r)) => {
            let mut r = r.clone();
            r.remove("model");
            r
        }
        Some(_) => {
            return Err(GatewayError::invalid_param(
                "generateContentRequest",
                "generateContentRequest must be an object.",
            ))
        }
        None => tree.clone(),
    };
    // What chat cannot carry is counted by Gemini, or refused.
    let (chat, lossy) = match genai::to_chat(&inner, model, false) {
        Ok((chat, _)) => (chat, None),
        Err(e) => (genai::routing_form(&inner, model, false), Some(e)),
    };
    if !app.router().knows(model) {
        return Err(GatewayError::model_not_found(model));
    }
    // The model must be one a plan can serve (a route, a provider's).
    let body = RequestBody::from_map(chat);
    let plan = plan_for(app, caller, model, &body, false)?;
    // Gemini's own count when Gemini serves the model (else, or if that
    // fails, the gateway's).
    let gemini = plan
        .deployments
        .iter()
        .find(|d| crate::executor::speaks_generate(d));
    if let Some(d) = gemini {
        match crate::executor::generate_count(app, d, &tree).await {
            Ok(answer) => return Ok(super::respond::json_bytes(answer)),
            Err(e) => {
                tracing::debug!(deployment = %d.label(), error = %e, "countTokens upstream failed; counted here")
            }
        }
    }
    if let Some(e) = lossy {
        return Err(e);
    }
    crate::tokens::ready().await;
    let n = crate::tokens::chat_prompt(body.map());
    Ok(Json(json!({
        "totalTokens": n,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}],
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vertex_paths_name_the_model_as_the_gateway_does() {
        for (path, model, method) in [
            ("/v1beta1/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash", Method::Generate),
            ("/v1/publishers/google/models/gemini-2.5-flash:streamGenerateContent", "gemini-2.5-flash", Method::Stream),
            ("/v1beta1/publishers/openai/models/gpt-4o:countTokens", "openai/gpt-4o", Method::Count),
            ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash", Method::Generate),
        ] {
            assert_eq!(target_of(path), Some((model.to_string(), method)), "{path}");
        }
        for bad in [
            "/v1beta1/projects/p/publishers/google/models/m:generateContent",
            "/v1beta1/publishers//models/m:generateContent",
            "/v1beta1/publishers/google/models/",
            "/v1beta1/endpoints/e:predict",
            "/v1/chat/completions",
        ] {
            assert_eq!(target_of(bad), None, "{bad}");
        }
        assert!(is_gemini_path(
            "/v1beta1/publishers/google/models/m:generateContent"
        ));
        assert!(is_gemini_path(
            "/v1/projects/p/locations/l/publishers/google/models/m:generateContent"
        ));
        assert!(!is_gemini_path("/v1/models"));
    }
}
