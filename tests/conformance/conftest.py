"""Fixtures: a running `polyplex mock` and a `polyplex serve` configured against it.

The binary is taken from $POLYPLEX_BIN, else target/debug/polyplex.
"""
import contextlib
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("POLYPLEX_BIN", str(ROOT / "target" / "debug" / "polyplex"))
MASTER_KEY = "conformance-master-key"
# The mock verifies SigV4 signatures made with its own test key and this secret.
MOCK_AWS_SECRET = "polyplex-mock-secret-access-key"


def mock_openai_provider(mock: str) -> str:
    """A `[[providers]]` entry for the mock's OpenAI protocol, no retries."""
    return f"""[[providers]]
name = "openai"
base_url = "{mock}/v1"
api_key = "sk-mock-provider"
models = ["gpt-4o-mini"]
max_retries = 0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


class Proc:
    def __init__(self, args, cwd, env=None):
        self.log = tempfile.NamedTemporaryFile(prefix="polyplex-", suffix=".log", delete=False)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.p = subprocess.Popen(args, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()

    def output(self) -> str:
        return Path(self.log.name).read_text()


def admin(gateway, method, path, body=None, key=MASTER_KEY):
    """A call of the admin API: its status and JSON body."""
    req = urllib.request.Request(
        gateway + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def records_of(gateway, request_id, want=1):
    """The usage records of one request, once the gateway has written them."""
    for _ in range(100):
        status, out = admin(gateway, "GET", f"/admin/usage/records/{request_id}")
        if status == 200 and len(out["data"]) >= want:
            return out["data"]
        time.sleep(0.05)
    raise AssertionError(f"no usage record for {request_id}")


@contextlib.contextmanager
def own_gateway(d, providers, extra=""):
    """A gateway of a test's own, in directory `d` (its SQLite store there),
    with the `[[providers]]` text given and `extra` top-level settings:
    yields its SDK client and its process, and stops it."""
    from openai import OpenAI

    port = free_port()
    (d / "polyplex.toml").write_text(f"""
listen = "127.0.0.1:{port}"
{extra}
[auth]
master_key = "{MASTER_KEY}"
{providers}""")
    proc = Proc([BIN, "serve"], cwd=d)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz")
        yield OpenAI(base_url=base + "/v1", api_key=MASTER_KEY, max_retries=0), proc
    finally:
        proc.stop()


@contextlib.contextmanager
def own_mock(*options):
    """A mock upstream of a test's own (`--latency-ms`, `--tokens-per-s`
    ...): yields its URL, and stops it."""
    port = free_port()
    proc = Proc([BIN, "mock", "--listen", f"127.0.0.1:{port}", *options], cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/__mock/stats")
        yield base
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def mock():
    with own_mock() as base:
        yield base


@pytest.fixture(scope="session")
def gateway_dir(tmp_path_factory):
    """The gateway's working directory: its polyplex.toml and polyplex.db."""
    return tmp_path_factory.mktemp("gw")


@pytest.fixture(scope="session")
def gateway(mock, gateway_dir):
    d = gateway_dir
    port = free_port()
    # A service-account key file whose token endpoint is the mock's (the key is a test-only one).
    sa = d / "vertex-service-account.json"
    sa.write_text(json.dumps({
        "type": "service_account", "project_id": "polyplex-conformance", "private_key_id": "test",
        "private_key": (ROOT / "tests" / "fixtures" / "test-only-rsa-key.pem").read_text(),
        "client_email": "gateway@polyplex-conformance.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": f"{mock}/token"}))
    (d / "polyplex.toml").write_text(f"""
listen = "127.0.0.1:{port}"
[auth]
master_key = "${{POLYPLEX_MASTER_KEY}}"
[[providers]]
name = "openai"
base_url = "{mock}/v1"
api_key = "${{MOCK_PROVIDER_KEY}}"
models = ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]
max_retries = 1
timeout_ms = 10000
[[providers]]
name = "anthropic"
base_url = "{mock}"
api_key = "${{MOCK_PROVIDER_KEY}}"
max_retries = 1
[[providers]]
name = "google"
base_url = "{mock}"
api_key = "${{MOCK_PROVIDER_KEY}}"
max_retries = 1
[[providers]]
name = "cohere"
base_url = "{mock}"
api_key = "${{MOCK_PROVIDER_KEY}}"
max_retries = 1
[[providers]]
name = "bedrock"
kind = "bedrock"
base_url = "{mock}"
aws_access_key_id = "AKIAPOLYPLEXMOCK"
aws_secret_access_key = "${{MOCK_AWS_SECRET}}"
max_retries = 1
[[providers]]
name = "vertex"
kind = "vertex"
base_url = "{mock}/v1/projects/polyplex-conformance/locations/us-east5"
credentials_file = "{sa}"
max_retries = 1
[[providers]]
name = "slow"
kind = "openai"
base_url = "{mock}/v1"
models = ["gpt-4o"]
max_retries = 0
timeout_ms = 1000
""")
    proc = Proc([BIN, "serve"], cwd=d, env={"POLYPLEX_MASTER_KEY": MASTER_KEY, "MOCK_PROVIDER_KEY": "sk-mock-provider",
                                          "MOCK_AWS_SECRET": MOCK_AWS_SECRET})
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz")
    yield base
    proc.stop()
    out = proc.output()
    assert "sk-mock-provider" not in out, "the provider key appeared in the gateway's log"
    assert MOCK_AWS_SECRET not in out, "the AWS secret appeared in the gateway's log"


@pytest.fixture
def client(gateway):
    from openai import OpenAI

    return OpenAI(base_url=gateway + "/v1", api_key=MASTER_KEY, max_retries=0)


@pytest.fixture
def fault(mock):
    """Arms a fault on the mock upstream for its next request(s)."""

    def arm(**spec):
        req = urllib.request.Request(mock + "/__mock/faults", data=json.dumps(spec).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=5).read()

    yield arm
    urllib.request.urlopen(urllib.request.Request(mock + "/__mock/faults", method="DELETE"), timeout=5).read()


@contextlib.contextmanager
def receiver(fail_first=0, posts=None):
    """A webhook receiver on loopback: yields its URL and the list of
    (headers, body) it got; answers 500 to its first `fail_first` posts.
    Every post's arrival time is appended to `posts` if given."""
    got, failures = [], [fail_first]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            if posts is not None:
                posts.append(time.time())
            if failures[0] > 0:
                failures[0] -= 1
                self.send_response(500)
                self.end_headers()
                return
            got.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
