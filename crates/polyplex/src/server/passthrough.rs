//! OpenAI's endpoints that polyplex does not translate — moderations,
//! image generation, edits and variations, speech, transcription and
//! translation — passed through to the OpenAI-protocol deployments that
//! serve the model asked for, with everything else a request gets: the
//! key's models, limits and budget, routing (`provider/model`, bare names,
//! routes, the `models` and `provider` options of a JSON body), retries and
//! failover, the `x-polyplex-*` headers and one usage record.
//!
//! The body goes upstream as the client wrote it, only the model's name
//! changed to the deployment's (a JSON member, or a form's `model` field,
//! spliced in place); the answer comes back as the upstream gave it (audio
//! and event streams as they arrive). A JSON answer's `usage` (token-priced
//! image and transcription models) is recorded and costed by the
//! catalog's prices. Azure OpenAI deployments serve images and audio at
//! their deployment URLs. Deployments of other protocols are passed over
//! (not an attempt), and a plan with none answers 400 naming the endpoint.

use super::auth::Caller;
use super::handlers::{parse_json, ratelimit_headers, read_body, Call, Unanswered};
use super::respond::Served;
use super::{App, RequestId};
use crate::client::UpstreamBody;
use crate::executor::{attempt_loop, send_with, transport_error, within};
use crate::health::InFlight;
use crate::routing::{Deployment, Facts};
use crate::usage::UsageRecord;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use polyplex_providers::{sse, Endpoint, UpstreamRequest};
use polyplex_types::validate::{self, ProviderPrefs, GATEWAY_FIELDS};
use polyplex_types::{ErrorSource, GatewayError, JsonMap, RequestBody, Usage};
use serde_json::Value;
use std::ops::Range;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Moderations,
    ImageGenerations,
    ImageEdits,
    ImageVariations,
    Speech,
    Transcriptions,
    Translations,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Moderations,
        Kind::ImageGenerations,
        Kind::ImageEdits,
        Kind::ImageVariations,
        Kind::Speech,
        Kind::Transcriptions,
        Kind::Translations,
    ];

    /// The path under the API's base URL (`/v1/...` here).
    fn path(self) -> &'static str {
        match self {
            Kind::Moderations => "moderations",
            Kind::ImageGenerations => "images/generations",
            Kind::ImageEdits => "images/edits",
            Kind::ImageVariations => "images/variations",
            Kind::Speech => "audio/speech",
            Kind::Transcriptions => "audio/transcriptions",
            Kind::Translations => "audio/translations",
        }
    }

    /// The gateway's route.
    pub fn route(self) -> &'static str {
        match self {
            Kind::Moderations => "/v1/moderations",
            Kind::ImageGenerations => "/v1/images/generations",
            Kind::ImageEdits => "/v1/images/edits",
            Kind::ImageVariations => "/v1/images/variations",
            Kind::Speech => "/v1/audio/speech",
            Kind::Transcriptions => "/v1/audio/transcriptions",
            Kind::Translations => "/v1/audio/translations",
        }
    }

    pub fn of(path: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.route() == path)
    }

    /// As usage records and metrics name the endpoint.
    fn label(self) -> &'static str {
        match self {
            Kind::Moderations => "moderations",
            Kind::ImageGenerations => "images.generations",
            Kind::ImageEdits => "images.edits",
            Kind::ImageVariations => "images.variations",
            Kind::Speech => "audio.speech",
            Kind::Transcriptions => "audio.transcriptions",
            Kind::Translations => "audio.translations",
        }
    }

    /// Whether Azure OpenAI has the endpoint at its deployments (it has no
    /// moderations nor image variations).
    fn on_azure(self) -> bool {
        !matches!(self, Kind::Moderations | Kind::ImageVariations)
    }

    /// OpenAI's model when the request names none.
    fn default_model(self) -> Option<&'static str> {
        match self {
            Kind::Moderations => Some("omni-moderation-latest"),
            Kind::ImageGenerations | Kind::ImageEdits | Kind::ImageVariations => Some("dall-e-2"),
            Kind::Speech | Kind::Transcriptions | Kind::Translations => None,
        }
    }
}

/// The client's body, to be passed on.
enum Sent {
    Json(JsonMap),
    /// A multipart form, and where its `model` field's value is in it.
    Form {
        text: Bytes,
        content_type: HeaderValue,
        model: Option<Range<usize>>,
    },
}

/// What a passed-through request asks for.
struct Asked {
    model: String,
    fallbacks: Vec<String>,
    prefs: ProviderPrefs,
    stream: bool,
    user: Option<String>,
    body: Sent,
}

impl Asked {
    /// The body for a deployment whose model is `model`.
    fn body_for(&self, model: &str) -> Result<Bytes, GatewayError> {
        match &self.body {
            Sent::Json(map) => {
                let mut out = JsonMap::with_capacity(map.len());
                for (k, v) in map {
                    if !GATEWAY_FIELDS.contains(&k.as_str()) {
                        out.insert(k.clone(), v.clone());
                    }
                }
                out.insert("model".into(), Value::String(model.to_string()));
                serde_json::to_vec(&out)
                    .map(Bytes::from)
                    .map_err(|e| GatewayError::internal(e.to_string()))
            }
            Sent::Form {
                text, model: None, ..
            } => Ok(text.clone()),
            Sent::Form {
                text,
                model: Some(at),
                ..
            } => {
                if &text[at.clone()] == model.as_bytes() {
                    return Ok(text.clone());
                }
                let mut out = Vec::with_capacity(text.len() + model.len());
                out.extend_from_slice(&text[..at.start]);
                out.extend_from_slice(model.as_bytes());
                out.extend_from_slice(&text[at.end..]);
                Ok(Bytes::from(out))
            }
        }
    }

    fn content_type(&self) -> HeaderValue {
        match &self.body {
            Sent::Json(_) => HeaderValue::from_static("application/json"),
            Sent::Form { content_type, .. } => content_type.clone(),
        }
    }
}

/// Reads what a request asks: a JSON body's members, or a form's `model`,
/// `stream` and `user` fields.
async fn asked(
    kind: Kind,
    content_type: Option<&HeaderValue>,
    text: Bytes,
) -> Result<Asked, GatewayError> {
    let form_boundary = form_boundary(content_type)?;
    // A form without a model, for an endpoint that has no default: named
    // as a JSON body's is.
    let default = |kind: Kind| {
        kind.default_model()
            .map(str::to_string)
            .ok_or_else(|| validate::missing("model"))
    };
    let Some(boundary) = form_boundary else {
        if matches!(
            kind,
            Kind::Transcriptions | Kind::Translations | Kind::ImageVariations
        ) {
            return Err(GatewayError::invalid_request(format!(
                "/v1/{} takes a multipart/form-data body (the audio or image file and its fields).",
                kind.path()
            )));
        }
        let map = parse_json(&text)?;
        let m = validate::passed_on(&map, kind.default_model())?;
        return Ok(Asked {
            model: m.model,
            fallbacks: m.fallback_models,
            prefs: m.provider,
            stream: m.stream,
            user: m.user,
            body: Sent::Json(map),
        });
    };
    let fields = form_fields(&text, boundary).await?;
    let model = match &fields.model {
        Some(m) if !m.is_empty() => m.clone(),
        _ => default(kind)?,
    };
    let model_at = fields.model.as_deref().and_then(|m| value_at(&text, m));
    Ok(Asked {
        model,
        fallbacks: Vec::new(),
        prefs: ProviderPrefs::default(),
        stream: fields.stream.as_deref() == Some("true"),
        user: validate::end_user(fields.user.as_deref(), None),
        body: Sent::Form {
            content_type: content_type
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("multipart/form-data")),
            text,
            model: model_at,
        },
    })
}

/// The boundary of a `multipart/form-data` body; None for another type.
pub(super) fn form_boundary(
    content_type: Option<&HeaderValue>,
) -> Result<Option<String>, GatewayError> {
    content_type
        .and_then(|v| v.to_str().ok())
        .filter(|ct| ct.to_ascii_lowercase().starts_with("multipart/form-data"))
        .map(|ct| {
            multer::parse_boundary(ct).map_err(|_| {
                GatewayError::invalid_request(
                    "The multipart/form-data Content-Type has no boundary.",
                )
            })
        })
        .transpose()
}

/// The text fields of a form that steer the gateway.
#[derive(Default)]
struct FormFields {
    model: Option<String>,
    stream: Option<String>,
    user: Option<String>,
}

async fn form_fields(text: &Bytes, boundary: String) -> Result<FormFields, GatewayError> {
    let body = text.clone();
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let bad = |e: multer::Error| {
        GatewayError::invalid_request(format!("The multipart/form-data body is malformed: {e}."))
    };
    let mut out = FormFields::default();
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let slot = match field.name() {
            Some("model") => &mut out.model,
            Some("stream") => &mut out.stream,
            Some("user") => &mut out.user,
            _ => continue,
        };
        *slot = Some(field.text().await.map_err(bad)?);
    }
    Ok(out)
}

/// Where the value of the form field `model` (read as `value`) is in the
/// body: after its part's `name="model"` header and blank line, up to the
/// line break before the next boundary.
fn value_at(text: &[u8], value: &str) -> Option<Range<usize>> {
    let name = memchr::memmem::find(text, b"name=\"model\"")?;
    let start = name + memchr::memmem::find(&text[name..], b"\r\n\r\n")? + 4;
    let end = start + value.len();
    (text.get(start..end)? == value.as_bytes() && text.get(end..end + 4)? == b"\r\n--")
        .then_some(start..end)
}

/// One passed-through request from its head to its answer.
pub async fn serve(
    kind: Kind,
    State(app): State<App>,
    Extension(rid): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    // (Not `Call::run`: an async closure's future is not known to be
    // `Send`, which a handler's must be.)
    let mut call = Call::new(app, &rid, caller, Endpoint::Embeddings, kind.label());
    if let Err(e) = call.read_headers(req.headers()) {
        return call.fail("", false, e, &Served::default());
    }
    let mut gone = Unanswered::new(&call);
    let resp = answer(kind, &call, req, &gone).await;
    gone.answered = true;
    resp
}

async fn answer(kind: Kind, call: &Call, req: Request, gone: &Unanswered<'_>) -> Response {
    let app = &call.app;
    let no_one = Served::default();
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let text = match read_body(app, req).await {
        Ok(b) => b,
        Err(e) => return call.fail("", false, e, &no_one),
    };
    let asked = match asked(kind, content_type.as_ref(), text).await {
        Ok(a) => a,
        Err(e) => return call.fail("", false, e, &no_one),
    };
    call.tag(asked.user.clone(), None);
    gone.asked_for(&asked.model, asked.stream);
    let (model, fallbacks) = unlisted(call, &asked.model, &asked.fallbacks, "openai");
    let admitted = match admit_as_asked(call, &asked.model, &model, &fallbacks).await {
        Ok(a) => a,
        Err(e) => return call.fail(&asked.model, asked.stream, e, &no_one),
    };
    let access = admitted.as_ref().and_then(|a| a.spec.models.as_deref());
    let planned = {
        // Nothing here is priced by its prompt: routing counts no tokens.
        let empty = RequestBody::parsed(Bytes::new(), JsonMap::new());
        let facts = Facts::new(&empty, Endpoint::Embeddings, asked.stream);
        let mut rng = rand::thread_rng();
        app.router()
            .plan(&model, &fallbacks, &asked.prefs, access, &facts, &mut rng)
    };
    let plan = match planned {
        Ok(p) => p,
        Err(e) => return call.fail(&asked.model, asked.stream, e, &no_one),
    };
    let asked = &asked;
    let outcome = attempt_loop(app, &plan, true, |d, g| async move {
        gone.attempt(&d, once(app, &d, g, kind, asked)).await
    })
    .await;
    let served = outcome.trace;
    let (upstream, d) = match outcome.result {
        Ok(x) => x,
        Err(e) => return call.fail(&asked.model, asked.stream, e, &served),
    };
    let (parts, body) = upstream.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let latency = call.started.elapsed();
    let record = UsageRecord {
        request_id: call.rid.clone(),
        endpoint: call.label,
        requested_model: asked.model.clone(),
        provider: Some(d.upstream.name.clone()),
        model: Some(d.model.clone()),
        status: parts.status.as_u16(),
        usage: Usage::default(),
        cost_usd: 0.0,
        latency,
        ttft: Some(latency),
        attempts: served.attempts,
        stream: asked.stream,
        at: SystemTime::now(),
        key: admitted.as_ref().map(|a| a.key.clone()),
        tags: call.tags(),
        charged: 0,
    };
    let body = if content_type.starts_with("application/json") {
        let read = tokio::time::timeout(d.upstream.timeout, crate::client::read_body(body));
        match gone.attempt(&d, read).await {
            Ok(Ok(bytes)) => {
                metered(app, &d, record)(usage_of(&bytes), None);
                Body::from(bytes)
            }
            Ok(Err(f)) => return call.fail(&asked.model, false, transport_error(&d, f), &served),
            Err(_) => {
                let e = GatewayError::upstream_timeout(&d.upstream.name, d.upstream.timeout);
                return call.fail(&asked.model, false, e, &served);
            }
        }
    } else if content_type.starts_with("text/event-stream") {
        // On to the client as it arrives, its usage read on the way.
        Body::new(Metered {
            inner: body,
            parser: sse::Parser::new(),
            usage: Usage::default(),
            status: parts.status.as_u16(),
            record: Some(Box::new(metered(app, &d, record))),
        })
    } else {
        // Audio (or text) as it arrives: nothing in it says tokens.
        metered(app, &d, record)(Usage::default(), None);
        Body::new(body)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = parts.status;
    for name in [header::CONTENT_TYPE, header::CONTENT_DISPOSITION] {
        if let Some(v) = parts.headers.get(&name) {
            resp.headers_mut().insert(name, v.clone());
        }
    }
    served.apply(&mut resp);
    if let Some(a) = &admitted {
        ratelimit_headers(&mut resp, &a.limits);
    }
    resp
}

/// The model and fallbacks to plan for a bare name the router does not
/// know (OpenAI's moderation, speech, transcription and older image
/// models, Cohere's rerank models are not in the catalog): asked of the
/// providers of protocol `kind` by their names ([`at_kind`]), those the
/// key may use if any, so the key's list and the plan both see them.
/// Otherwise the names as asked.
pub(super) fn unlisted(
    call: &Call,
    model: &str,
    fallbacks: &[String],
    kind: &str,
) -> (String, Vec<String>) {
    let router = call.app.router();
    let mut names = at_kind(&router, model, kind);
    if let Some(key) = call.caller.key() {
        let spec = key.spec();
        let may = |n: &String| router.may_reach(spec.models.as_deref(), n);
        if names.iter().any(may) {
            names.retain(may);
        }
    }
    match names.split_first() {
        Some((first, rest)) => (first.clone(), [rest, fallbacks].concat()),
        None => (model.to_string(), fallbacks.to_vec()),
    }
}

/// [`Call::admit`] of what [`unlisted`] chose, a refused model named as
/// the client wrote it (`asked`).
pub(super) async fn admit_as_asked(
    call: &Call,
    asked: &str,
    model: &str,
    fallbacks: &[String],
) -> Result<Option<crate::keys::Admitted>, GatewayError> {
    call.admit(model, fallbacks).await.map_err(|e| {
        if e.code.as_deref() == Some("model_not_allowed") && e.param.as_deref() == Some("model") {
            crate::keys::model_forbidden(asked)
        } else {
            e
        }
    })
}

/// A bare model name the router does not know: the providers of protocol
/// `kind` whose `models` list names it, else those configured from the
/// catalog's entry of that name that pass any name on — as `provider/model`
/// names (none for a name the router knows).
fn at_kind(router: &crate::routing::Router, model: &str, kind: &str) -> Vec<String> {
    if model.contains('/') || router.knows(model) {
        return Vec::new();
    }
    let of_kind = |u: &&std::sync::Arc<crate::upstream::Upstream>| u.kind == kind;
    let listed: Vec<_> = router
        .upstreams()
        .iter()
        .filter(of_kind)
        .filter(|u| {
            u.models
                .as_ref()
                .is_some_and(|m| m.iter().any(|x| x == model))
        })
        .collect();
    let chosen = if listed.is_empty() {
        router
            .upstreams()
            .iter()
            .filter(of_kind)
            .filter(|u| u.models.is_none() && u.catalog_id.as_deref() == Some(kind))
            .collect()
    } else {
        listed
    };
    chosen
        .iter()
        .map(|u| format!("{}/{model}", u.name))
        .collect()
}

/// One attempt on deployment `d`: the upstream's answer once its head is in.
async fn once(
    app: &App,
    d: &Deployment,
    _in_flight: InFlight,
    kind: Kind,
    asked: &Asked,
) -> Result<http::Response<UpstreamBody>, GatewayError> {
    let azure = d.upstream.kind == "azure" && kind.on_azure();
    if d.upstream.kind != "openai" && !azure {
        let mut e = GatewayError::invalid_param(
            "model",
            format!(
                "Provider `{}` ({} protocol) does not offer /v1/{} through polyplex; providers of OpenAI's protocol do{}.",
                d.upstream.name,
                d.upstream.kind,
                kind.path(),
                if kind.on_azure() { ", and Azure OpenAI" } else { "" }
            ),
        );
        // Nothing is sent: another deployment of the plan may serve it.
        e.source = ErrorSource::Translation;
        return Err(e);
    }
    let body = asked.body_for(&d.model)?;
    let wait = if asked.stream {
        d.upstream.first_byte_timeout
    } else {
        d.upstream.timeout
    };
    let sent = send_with(app, d, false, |target| {
        let url = if azure {
            polyplex_providers::azure::deployment_url(target, kind.path())?
        } else {
            polyplex_providers::join_url(&d.upstream.base_url, kind.path())
        };
        let mut headers = polyplex_providers::headers(target, asked.stream)?;
        headers.insert(header::CONTENT_TYPE, asked.content_type());
        if !asked.stream {
            headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        Ok(UpstreamRequest {
            url,
            headers,
            body,
            dropped: Vec::new(),
        })
    });
    within(d, wait, sent).await.map(|(resp, _)| resp)
}

/// Writes the usage record of an answer: its usage costed; for a stream,
/// the status it ended with (its head's, or a cut's) and its whole time.
pub(super) fn metered(
    app: &App,
    d: &Deployment,
    mut record: UsageRecord,
) -> impl FnOnce(Usage, Option<u16>) {
    let (app, d) = (app.clone(), d.clone());
    move |usage, ended| {
        record.cost_usd = crate::usage::cost(app.catalog(), &d, &usage);
        record.usage = usage;
        if let Some(status) = ended {
            record.status = status;
            record.latency = record
                .at
                .elapsed()
                .map_or(record.latency, |since| record.latency + since);
        }
        super::respond::record_served(&app, &d, record);
    }
}

/// An event stream passed on as it arrives and read on the way for the
/// `usage` its events carry (a transcription's `transcript.text.done`, an
/// image's `image_generation.completed`); its usage record is written when
/// it ends: 502 if the upstream broke it, 499 if the client went first.
struct Metered {
    inner: UpstreamBody,
    parser: sse::Parser,
    usage: Usage,
    /// The answer's status, what a stream that ends well is recorded with.
    status: u16,
    record: Option<Recording>,
}

/// Writes an answer's usage record, given its usage and how it ended.
pub(super) type Recording = Box<dyn FnOnce(Usage, Option<u16>) + Send>;

impl Metered {
    fn end(&mut self, status: Option<u16>) {
        if let Some(record) = self.record.take() {
            record(std::mem::take(&mut self.usage), status);
        }
    }
}

impl hyper::body::Body for Metered {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        use std::task::Poll;
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let mut events = Vec::new();
                    self.parser.feed(data, &mut events);
                    for e in events {
                        let u = usage_of(e.data.as_bytes());
                        if u != Usage::default() {
                            self.usage = u;
                        }
                    }
                }
            }
            Poll::Ready(None) => {
                let status = self.status;
                self.end(Some(status))
            }
            Poll::Ready(Some(Err(_))) => self.end(Some(502)),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.end(Some(499));
    }
}

/// The tokens a JSON answer (or event) reports: `input_tokens` /
/// `output_tokens` (images, transcriptions), or chat's names.
fn usage_of(body: &[u8]) -> Usage {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Usage::default();
    };
    let u = &v["usage"];
    let n = |a: &str, b: &str| u[a].as_u64().or_else(|| u[b].as_u64()).unwrap_or(0);
    Usage {
        prompt_tokens: n("input_tokens", "prompt_tokens"),
        completion_tokens: n("output_tokens", "completion_tokens"),
        ..Usage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: &str = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\nID3abc\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nopenai/whisper-1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nu-7\r\n--XyZ--\r\n";

    #[tokio::test]
    async fn a_forms_model_is_read_and_replaced_in_place() {
        let ct = HeaderValue::from_static("multipart/form-data; boundary=XyZ");
        let a = asked(
            Kind::Transcriptions,
            Some(&ct),
            Bytes::from_static(FORM.as_bytes()),
        )
        .await
        .unwrap();
        assert_eq!(
            (a.model.as_str(), a.user.as_deref(), a.stream),
            ("openai/whisper-1", Some("u-7"), false)
        );
        let out = a.body_for("whisper-1").unwrap();
        assert_eq!(
            out,
            FORM.replace("openai/whisper-1", "whisper-1").as_bytes()
        );
        // A form without a model, for an endpoint that needs one: named.
        let none = FORM.replace("name=\"model\"", "name=\"prompt\"");
        let e = asked(Kind::Transcriptions, Some(&ct), Bytes::from(none))
            .await
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("model"));
        // Audio must come as a form.
        let json = HeaderValue::from_static("application/json");
        let e = asked(Kind::Transcriptions, Some(&json), Bytes::from_static(b"{}"))
            .await
            .err()
            .unwrap();
        assert!(e.message.contains("multipart/form-data"), "{}", e.message);
    }

    #[tokio::test]
    async fn a_json_body_keeps_its_members_with_the_deployments_model() {
        let json = HeaderValue::from_static("application/json");
        let text = br#"{"input": "hi", "models": ["b"], "user": "u"}"#;
        let a = asked(Kind::Moderations, Some(&json), Bytes::from_static(text))
            .await
            .unwrap();
        assert_eq!(
            (a.model.as_str(), a.fallbacks.as_slice()),
            ("omni-moderation-latest", &["b".to_string()][..])
        );
        let out: Value =
            serde_json::from_slice(&a.body_for("omni-moderation-2024-09-26").unwrap()).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"input": "hi", "user": "u", "model": "omni-moderation-2024-09-26"})
        );
        let e = asked(
            Kind::Speech,
            Some(&json),
            Bytes::from_static(br#"{"input": "x"}"#),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = asked(
            Kind::Speech,
            Some(&json),
            Bytes::from_static(br#"{"model": 5}"#),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.param.as_deref(), Some("model"));
        // Checked as a chat request's: a `user` that is not a string is named.
        let e = asked(
            Kind::Moderations,
            Some(&json),
            Bytes::from_static(br#"{"input": "x", "user": 5}"#),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.param.as_deref(), Some("user"));
        assert_eq!(
            usage_of(br#"{"usage": {"input_tokens": 3, "output_tokens": 272}}"#).completion_tokens,
            272
        );
        assert_eq!(Kind::of("/v1/audio/speech"), Some(Kind::Speech));
        assert_eq!(Kind::of("/v1/audio"), None);
    }
}
