//! The load client: keep-alive HTTP/1.1 connections (TCP_NODELAY), one per
//! concurrent worker, timings into HDR histograms (nanoseconds).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Where and how one target is called.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub unary_body: Bytes,
    pub stream_body: Bytes,
}

pub fn histogram() -> Histogram<u64> {
    // 1 ns .. 10 min, 3 significant figures.
    #[allow(clippy::unwrap_used)]
    Histogram::new_with_bounds(1, 600_000_000_000, 3).unwrap()
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record(d.as_nanos().clamp(1, 600_000_000_000) as u64);
}

/// Errors by kind, with the first message seen.
#[derive(Default, Debug, Clone)]
pub struct Errors {
    pub count: u64,
    pub first: Option<String>,
}

impl Errors {
    pub fn add(&mut self, msg: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(msg());
        }
    }
    pub fn merge(&mut self, o: &Errors) {
        self.count += o.count;
        if self.first.is_none() {
            self.first.clone_from(&o.first);
        }
    }
}

struct Conn {
    addr: SocketAddr,
    tx: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, tx: None }
    }

    async fn sender(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        let alive = matches!(&self.tx, Some(tx) if !tx.is_closed());
        if !alive {
            let tcp = TcpStream::connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.tx = Some(tx);
        }
        match self.tx.as_mut() {
            Some(tx) => {
                tx.ready().await?;
                Ok(tx)
            }
            None => anyhow::bail!("no connection"),
        }
    }
}

fn build(ep: &Endpoint, stream: bool) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut b = Request::post(ep.path.as_str())
        .header(hyper::header::HOST, ep.addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json");
    for (k, v) in &ep.headers {
        b = b.header(k, v);
    }
    let body = if stream {
        &ep.stream_body
    } else {
        &ep.unary_body
    };
    Ok(b.body(Full::new(body.clone()))?)
}

/// One unary call; the whole body is read.
async fn unary(conn: &mut Conn, ep: &Endpoint) -> anyhow::Result<()> {
    let req = build(ep, false)?;
    let tx = conn.sender().await?;
    let resp = tx.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        anyhow::bail!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok(())
}

/// What one stream looked like from the client.
pub struct StreamTiming {
    pub ttft: Duration,
    /// Wall-clock stamps (see `stamp`): the request sent, its first body
    /// bytes received, and the upstream's stamp in them (for `--trace`).
    pub sent_ns: u64,
    pub first_ns: u64,
    pub first_stamp_ns: u64,
    pub gaps: Vec<Duration>,
    /// Per stamped chunk after the first: how much longer it took to arrive
    /// than the chunk before it (its delay minus the previous one's, 0 if
    /// less) — the gap the path added beyond the upstream's own.
    pub stretches: Vec<Duration>,
}

/// One streamed call: time to the first body bytes, the gaps between
/// the next ones, and a check that it ended with `[DONE]`.
async fn streamed(conn: &mut Conn, ep: &Endpoint) -> anyhow::Result<StreamTiming> {
    let req = build(ep, true)?;
    let tx = conn.sender().await?;
    let start = Instant::now();
    let sent_ns = crate::stamp::now_ns();
    let (mut first_ns, mut first_stamp_ns) = (0, 0);
    let resp = tx.send_request(req).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut ttft = None;
    let mut last = start;
    let mut gaps = Vec::with_capacity(32);
    let mut stretches = Vec::with_capacity(32);
    let mut stamps = Vec::with_capacity(4);
    let mut last_delay: Option<u64> = None;
    let mut tail: Vec<u8> = Vec::new();
    let mut all_for_error: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let now = Instant::now();
        let now_ns = crate::stamp::now_ns();
        stamps.clear();
        crate::stamp::read_all(data, &mut stamps);
        for sent in &stamps {
            let delay = now_ns.saturating_sub(*sent);
            if let Some(prev) = last_delay {
                stretches.push(Duration::from_nanos(delay.saturating_sub(prev)));
            }
            last_delay = Some(delay);
        }
        match ttft {
            None => {
                ttft = Some(now - start);
                first_ns = now_ns;
                first_stamp_ns = stamps.first().copied().unwrap_or(0);
            }
            Some(_) => gaps.push(now - last),
        }
        last = now;
        if !status.is_success() && all_for_error.len() < 300 {
            all_for_error.extend_from_slice(data);
        }
        tail.extend_from_slice(data);
        if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
    }
    if !status.is_success() {
        anyhow::bail!("HTTP {status}: {}", String::from_utf8_lossy(&all_for_error));
    }
    if memchr::memmem::find(&tail, b"[DONE]").is_none() {
        anyhow::bail!(
            "stream ended without [DONE]: ...{}",
            String::from_utf8_lossy(&tail)
        );
    }
    Ok(StreamTiming {
        ttft: ttft.unwrap_or_default(),
        sent_ns,
        first_ns,
        first_stamp_ns,
        gaps,
        stretches,
    })
}

/// Waits until the endpoint answers a unary call with 2xx.
pub async fn wait_ready(ep: &Endpoint, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut c = Conn::new(ep.addr);
        match tokio::time::timeout(Duration::from_secs(5), unary(&mut c, ep)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("not ready after {timeout:?}: {last}")
}

/// Sequential unary calls on one connection.
pub async fn latency(ep: &Endpoint, warmup: usize, n: usize) -> (Histogram<u64>, Errors) {
    let mut h = histogram();
    let mut errors = Errors::default();
    let mut c = Conn::new(ep.addr);
    for i in 0..warmup + n {
        let t = Instant::now();
        match unary(&mut c, ep).await {
            Ok(()) if i >= warmup => record(&mut h, t.elapsed()),
            Ok(()) => {}
            Err(e) => errors.add(|| e.to_string()),
        }
    }
    (h, errors)
}

pub struct Load {
    pub ok: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    pub errors: Errors,
}

/// `conc` workers, each on its own connection, calling for `dur`.
pub async fn closed_loop(ep: &Endpoint, conc: usize, dur: Duration) -> Load {
    let shared = Arc::new(Mutex::new((histogram(), Errors::default(), 0u64)));
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::with_capacity(conc);
    for _ in 0..conc {
        let ep = ep.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut errors = Errors::default();
            let mut ok = 0u64;
            let mut c = Conn::new(ep.addr);
            while Instant::now() < deadline {
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(30), unary(&mut c, &ep)).await {
                    Ok(Ok(())) => {
                        record(&mut h, t.elapsed());
                        ok += 1;
                    }
                    Ok(Err(e)) => {
                        errors.add(|| e.to_string());
                        c = Conn::new(ep.addr);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(_) => {
                        errors.add(|| "timed out after 30s".into());
                        c = Conn::new(ep.addr);
                    }
                }
            }
            let mut g = shared.lock().await;
            let _ = g.0.add(&h);
            g.1.merge(&errors);
            g.2 += ok;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let g = shared.lock().await;
    Load {
        ok: g.2,
        elapsed,
        hist: g.0.clone(),
        errors: g.1.clone(),
    }
}

pub struct Streams {
    pub ttft: Histogram<u64>,
    pub gaps: Histogram<u64>,
    pub stretch: Histogram<u64>,
    pub errors: Errors,
}

/// Sequential streamed calls on one connection. With `trace`, each one's
/// wall-clock stamps go to stderr as a `CLIENT` line (`bench/phases.py`).
pub async fn streams(ep: &Endpoint, warmup: usize, n: usize, trace: bool) -> Streams {
    let mut out = Streams {
        ttft: histogram(),
        gaps: histogram(),
        stretch: histogram(),
        errors: Errors::default(),
    };
    let mut c = Conn::new(ep.addr);
    for i in 0..warmup + n {
        let r = streamed(&mut c, ep).await;
        if let (true, Ok(t)) = (trace, &r) {
            eprintln!(
                "CLIENT sent={} first={} stamp={}",
                t.sent_ns, t.first_ns, t.first_stamp_ns
            );
        }
        match r {
            Ok(t) if i >= warmup => {
                record(&mut out.ttft, t.ttft);
                for g in t.gaps {
                    record(&mut out.gaps, g);
                }
                for g in t.stretches {
                    record(&mut out.stretch, g);
                }
            }
            Ok(_) => {}
            Err(e) => {
                out.errors.add(|| e.to_string());
                c = Conn::new(ep.addr);
            }
        }
    }
    out
}

/// `conc` streams at once, each on its own connection; returns the errors
/// (non-2xx, broken connections, streams without `[DONE]`).
pub async fn stream_burst(ep: &Endpoint, conc: usize) -> Errors {
    let mut tasks = Vec::with_capacity(conc);
    for _ in 0..conc {
        let ep = ep.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(ep.addr);
            match tokio::time::timeout(Duration::from_secs(60), streamed(&mut c, &ep)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("stream timed out after 60s".into()),
            }
        }));
    }
    let mut errors = Errors::default();
    for t in tasks {
        match t.await {
            Ok(None) => {}
            Ok(Some(e)) => errors.add(|| e),
            Err(e) => errors.add(|| e.to_string()),
        }
    }
    errors
}
