//! The fixed-latency upstream every target is measured against.
//!
//! A minimal hyper server on a current-thread runtime (the orchestrator pins
//! it to one core with `taskset`) that answers the OpenAI chat and Anthropic
//! messages shapes, unary and SSE, from bytes prepared once at start. It adds
//! `delay_us` before answering and sends a stream's chunks `interval_us`
//! apart, so the only variable in a run is the proxy in front of it.
//!
//! Every content chunk carries the wall-clock time it was sent (`@@` and 20
//! digits of nanoseconds, in the token text, which every target relays):
//! the client compares it with when the chunk arrived, so how much a proxy
//! stretches the gap between two chunks is measured apart from the jitter
//! of the upstream's own timer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Added before the answer (or the first chunk).
    pub delay_us: u64,
    /// Content chunks in a stream.
    pub chunks: usize,
    /// Time between two content chunks.
    pub interval_us: u64,
}

type Body = BoxBody<Bytes, Infallible>;

const OPENAI_UNARY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is the benchmark upstream answering with a short fixed reply.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":15,"total_tokens":29},"system_fingerprint":"fp_bench"}"#;

const ANTHROPIC_UNARY: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello! This is the benchmark upstream answering with a short fixed reply."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":14,"output_tokens":15}}"#;

/// The send-time field in every content chunk: [`crate::stamp::MARK`] and
/// zeros, overwritten as the chunk goes out.
fn token(i: usize) -> String {
    format!(
        "tok{i} {}{} ",
        crate::stamp::MARK,
        "0".repeat(crate::stamp::DIGITS)
    )
}

fn openai_chunk(i: usize) -> Bytes {
    let t = token(i);
    let delta = if i == 0 {
        format!(r#"{{"role":"assistant","content":"{t}"}}"#)
    } else {
        format!(r#"{{"content":"{t}"}}"#)
    };
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_bench\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
    ))
}

fn openai_tail(chunks: usize, usage: bool) -> Bytes {
    let mut s = String::from(
        "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_bench\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n",
    );
    if usage {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_bench\",\"choices\":[],\"usage\":{{\"prompt_tokens\":14,\"completion_tokens\":{chunks},\"total_tokens\":{}}}}}\n\n",
            14 + chunks
        ));
    }
    s.push_str("data: [DONE]\n\n");
    Bytes::from(s)
}

fn anthropic_head() -> Bytes {
    Bytes::from_static(
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":14,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    )
}

fn anthropic_chunk(i: usize) -> Bytes {
    Bytes::from(format!(
        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n",
        token(i)
    ))
}

fn anthropic_tail(chunks: usize) -> Bytes {
    Bytes::from(format!(
        "event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\nevent: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{chunks}}}}}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
    ))
}

/// Everything a response is made of, built once.
struct Prepared {
    shape: Shape,
    openai_chunks: Vec<Bytes>,
    openai_tail_usage: Bytes,
    openai_tail: Bytes,
    anthropic_chunks: Vec<Bytes>,
    anthropic_tail: Bytes,
}

impl Prepared {
    fn new(shape: Shape) -> Self {
        let n = shape.chunks.max(1);
        Self {
            shape,
            openai_chunks: (0..n).map(openai_chunk).collect(),
            openai_tail_usage: openai_tail(n, true),
            openai_tail: openai_tail(n, false),
            anthropic_chunks: (0..n)
                .map(|i| {
                    if i == 0 {
                        let mut v = anthropic_head().to_vec();
                        v.extend_from_slice(&anthropic_chunk(0));
                        Bytes::from(v)
                    } else {
                        anthropic_chunk(i)
                    }
                })
                .collect(),
            anthropic_tail: anthropic_tail(n),
        }
    }
}

fn full(status: StatusCode, ctype: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

/// A stream whose first chunk goes out at once and each next one
/// `interval` later, each stamped with the time it goes out; the tail
/// follows the last chunk immediately.
fn sse(chunks: Vec<Bytes>, tail: Bytes, interval: Duration) -> Response<Body> {
    let mut items = chunks;
    if let Some(last) = items.pop() {
        let mut v = last.to_vec();
        v.extend_from_slice(&tail);
        items.push(Bytes::from(v));
    }
    let s = stream::unfold(
        (items.into_iter(), true),
        move |(mut it, first)| async move {
            let next = it.next()?;
            if !first && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            let mut b = BytesMut::from(&next[..]);
            crate::stamp::write_now(&mut b);
            Some((Ok::<_, Infallible>(Frame::data(b.freeze())), (it, false)))
        },
    );
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(s)));
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    r
}

async fn handle(p: &Prepared, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return full(StatusCode::BAD_REQUEST, "text/plain", Bytes::new()),
    };
    if p.shape.delay_us > 0 {
        tokio::time::sleep(Duration::from_micros(p.shape.delay_us)).await;
    }
    let stream = contains(&body, b"\"stream\":true") || contains(&body, b"\"stream\": true");
    let interval = Duration::from_micros(p.shape.interval_us);
    match path.as_str() {
        "/v1/chat/completions" | "/chat/completions" => {
            if stream {
                let usage = contains(&body, b"include_usage");
                let tail = if usage { &p.openai_tail_usage } else { &p.openai_tail };
                sse(p.openai_chunks.clone(), tail.clone(), interval)
            } else {
                full(StatusCode::OK, "application/json", Bytes::from_static(OPENAI_UNARY.as_bytes()))
            }
        }
        "/v1/messages" => {
            if stream {
                sse(p.anthropic_chunks.clone(), p.anthropic_tail.clone(), interval)
            } else {
                full(StatusCode::OK, "application/json", Bytes::from_static(ANTHROPIC_UNARY.as_bytes()))
            }
        }
        "/health" | "/v1/models" | "/models" => full(
            StatusCode::OK,
            "application/json",
            Bytes::from_static(br#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":0,"owned_by":"bench"}]}"#),
        ),
        _ => full(StatusCode::NOT_FOUND, "application/json", Bytes::from_static(br#"{"error":{"message":"not found","type":"invalid_request_error"}}"#)),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// Serves until the process is killed.
pub fn serve(listen: SocketAddr, shape: Shape) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        eprintln!("bench upstream listening on {}", listener.local_addr()?);
        let prepared: &'static Prepared = Box::leak(Box::new(Prepared::new(shape)));
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(_) => continue,
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(move |req| async move {
                    Ok::<_, Infallible>(handle(prepared, req).await)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}
