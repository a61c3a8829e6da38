//! The processes under test: how each is configured, started and stopped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION};

use crate::load::Endpoint;

pub const MASTER_KEY: &str = "bench-master-key-0123456789";
pub const PROVIDER_KEY: &str = "sk-bench-upstream-key";
const LITELLM_KEY: &str = "sk-litellm-bench-Master-Key-0123456789";

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {name}: {e}"))?;
        Ok(Self { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A command pinned to one CPU when `taskset` is there.
pub fn pinned(cpu: Option<usize>, program: &str) -> Command {
    match cpu {
        Some(c) if which("taskset").is_some() => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string(), program]);
            cmd
        }
        _ => Command::new(program),
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn chat_bodies(model: &str) -> (Bytes, Bytes) {
    let unary = format!(
        r#"{{"model":"{model}","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Say hello to the benchmark in one short sentence."}}],"max_tokens":64,"temperature":0.2}}"#
    );
    let stream = format!(
        r#"{{"model":"{model}","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Say hello to the benchmark in one short sentence."}}],"max_tokens":64,"temperature":0.2,"stream":true}}"#
    );
    (Bytes::from(unary), Bytes::from(stream))
}

pub fn bearer(key: &str) -> (HeaderName, HeaderValue) {
    (
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap_or(HeaderValue::from_static("")),
    )
}

pub fn endpoint(
    port: u16,
    path: &str,
    model: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Endpoint {
    let (unary_body, stream_body) = chat_bodies(model);
    Endpoint {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        path: path.to_string(),
        headers,
        unary_body,
        stream_body,
    }
}

pub fn direct(upstream: u16) -> Endpoint {
    endpoint(
        upstream,
        "/v1/chat/completions",
        "gpt-4o-mini",
        vec![bearer(PROVIDER_KEY)],
    )
}

/// nginx as a plain keep-alive reverse proxy, unbuffered (for SSE).
pub fn start_nginx(dir: &Path, upstream: u16) -> anyhow::Result<(Proc, Endpoint)> {
    let bin = which("nginx")
        .ok_or_else(|| anyhow::anyhow!("nginx is not installed (bash bench/setup.sh)"))?;
    let port = free_port()?;
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    let user = if std::env::var("USER").as_deref() == Ok("root") || is_root() {
        "user root;\n"
    } else {
        ""
    };
    std::fs::write(
        &conf,
        format!(
            "{user}worker_processes 2;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log warn;\n\
events {{ worker_connections 4096; }}\n\
http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
  upstream mock {{ server 127.0.0.1:{upstream}; keepalive 512; }}\n\
  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    keepalive_requests 1000000;\n    location / {{\n      proxy_pass http://mock;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n      tcp_nodelay on;\n    }}\n  }}\n}}\n",
            p = prefix.display()
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p").arg(&prefix).arg("-c").arg(&conf);
    let proc = Proc::spawn("nginx", &mut cmd, dir)?;
    Ok((
        proc,
        endpoint(
            port,
            "/v1/chat/completions",
            "gpt-4o-mini",
            vec![bearer(PROVIDER_KEY)],
        ),
    ))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// polyplex with its production shape: a gateway key (made with `polyplex
/// keys create`, looked up, admitted and charged on every request), usage
/// records written to the SQLite store, routing, one OpenAI-protocol and one
/// Anthropic-protocol provider; `extra` (TOML, normally empty) is appended.
/// Returns the process, its port and the key.
pub fn start_polyplex(
    name: &str,
    bin: &Path,
    dir: &Path,
    upstream: u16,
    extra: &str,
) -> anyhow::Result<(Proc, u16, String)> {
    let port = free_port()?;
    let conf = dir.join(format!("{name}.toml"));
    let db = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&db);
    std::fs::write(
        &conf,
        format!(
            r#"listen = "127.0.0.1:{port}"
[auth]
master_key = "${{BENCH_MASTER_KEY}}"
[store]
url = "sqlite://{}"

[[providers]]
name = "openai"
base_url = "http://127.0.0.1:{upstream}/v1"
api_key = "${{BENCH_PROVIDER_KEY}}"
models = ["gpt-4o-mini"]

[[providers]]
name = "anthropic"
base_url = "http://127.0.0.1:{upstream}"
api_key = "${{BENCH_PROVIDER_KEY}}"
models = ["claude-sonnet-4-5"]
{extra}
"#,
            db.display()
        ),
    )?;
    let made = Command::new(bin)
        .args(["keys", "create", "--name", "bench", "--json", "--config"])
        .arg(&conf)
        .env("BENCH_MASTER_KEY", MASTER_KEY)
        .env("BENCH_PROVIDER_KEY", PROVIDER_KEY)
        .output()?;
    if !made.status.success() {
        anyhow::bail!(
            "polyplex keys create failed: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let key = serde_json::from_slice::<serde_json::Value>(&made.stdout)?["key"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("polyplex keys create printed no key"))?
        .to_string();
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(&conf)
        .env("BENCH_MASTER_KEY", MASTER_KEY)
        .env("BENCH_PROVIDER_KEY", PROVIDER_KEY)
        .env("RUST_LOG", "info");
    Ok((Proc::spawn(name, &mut cmd, dir)?, port, key))
}

pub fn polyplex_endpoint(port: u16, key: &str, model: &str) -> Endpoint {
    endpoint(port, "/v1/chat/completions", model, vec![bearer(key)])
}

/// LiteLLM's proxy from bench/.venv, one model pointing at the upstream.
pub fn start_litellm(
    bench_dir: &Path,
    dir: &Path,
    upstream: u16,
) -> anyhow::Result<(Proc, Endpoint)> {
    let bin = bench_dir.join(".venv/bin/litellm");
    if !bin.is_file() {
        anyhow::bail!("LiteLLM is not installed (bash bench/setup.sh)");
    }
    let port = free_port()?;
    let conf = dir.join("litellm.yaml");
    std::fs::write(
        &conf,
        format!(
            "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: http://127.0.0.1:{upstream}/v1\n      api_key: {PROVIDER_KEY}\nlitellm_settings:\n  telemetry: false\n  drop_params: true\ngeneral_settings:\n  master_key: {LITELLM_KEY}\n"
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&conf)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_LOG", "ERROR")
        .env("LITELLM_TELEMETRY", "False")
        .env("NO_DOCS", "True");
    let proc = Proc::spawn("litellm", &mut cmd, dir)?;
    Ok((
        proc,
        endpoint(
            port,
            "/v1/chat/completions",
            "gpt-4o-mini",
            vec![bearer(LITELLM_KEY)],
        ),
    ))
}

/// Portkey's open-source gateway (Node) from bench/node, told the upstream
/// with its custom-host header.
pub fn start_portkey(
    bench_dir: &Path,
    dir: &Path,
    upstream: u16,
) -> anyhow::Result<(Proc, Endpoint)> {
    let script = bench_dir.join("node/node_modules/@portkey-ai/gateway/build/start-server.js");
    if !script.is_file() {
        anyhow::bail!("Portkey's gateway is not installed (bash bench/setup.sh)");
    }
    let port = free_port()?;
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .arg(format!("--port={port}"))
        .arg("--headless")
        .env("NODE_ENV", "production")
        .env("TRUSTED_CUSTOM_HOSTS", "127.0.0.1,localhost");
    let proc = Proc::spawn("portkey", &mut cmd, dir)?;
    let headers = vec![
        bearer(PROVIDER_KEY),
        (
            HeaderName::from_static("x-portkey-provider"),
            HeaderValue::from_static("openai"),
        ),
        (
            HeaderName::from_static("x-portkey-custom-host"),
            HeaderValue::from_str(&format!("http://127.0.0.1:{upstream}/v1"))?,
        ),
    ];
    Ok((
        proc,
        endpoint(port, "/v1/chat/completions", "gpt-4o-mini", headers),
    ))
}
