"""Reranking (`/v1/rerank`, `/v2/rerank`) through Cohere's own SDK (v1 and v2
clients) and the OpenAI SDK's raw `post`: Cohere's API and an
OpenAI-compatible reranker (Jina's shape) behind one answer shape, with the
gateway's keys, routing, failover, headers, cost and usage records."""
import json
import urllib.request

import cohere
import httpx
import openai
import pytest

from conftest import MASTER_KEY, MOCK_AWS_SECRET, admin, own_gateway, records_of

DOCS = ["The sky is blue.", "Paris is the capital of France.", "Capital cities are large."]


@pytest.fixture(scope="module")
def rr(mock, tmp_path_factory):
    # Two OpenAI-compatible rerankers alike, for failover along a route.
    jinas = "".join(f"""
[[providers]]
name = "{name}"
kind = "openai"
base_url = "{mock}/v1"
api_key = "sk-mock-jina"
models = ["jina-reranker-v2"]
prices."jina-reranker-v2" = {{ input = 20.0 }}
max_retries = 0""" for name in ("jina", "jina-backup"))
    providers = f"""
[[providers]]
name = "cohere"
base_url = "{mock}"
api_key = "sk-mock-cohere"
max_retries = 0
prices."rerank-english-v3.0" = {{ search_unit = 0.001 }}{jinas}
[[providers]]
name = "anthropic"
base_url = "{mock}"
api_key = "sk-mock-provider"
[[providers]]
name = "bedrock"
kind = "bedrock"
base_url = "{mock}"
aws_access_key_id = "AKIAPOLYPLEXMOCK"
aws_secret_access_key = "{MOCK_AWS_SECRET}"
max_retries = 0
[[routes]]
name = "ranker"
targets = ["jina/jina-reranker-v2", "jina-backup/jina-reranker-v2"]
strategy = "priority"
"""
    with own_gateway(tmp_path_factory.mktemp("rerank"), providers) as (client, proc):
        yield str(client.base_url).removesuffix("/v1/")


def last_request(mock, path):
    with urllib.request.urlopen(mock + "/__mock/requests", timeout=5) as r:
        seen = json.loads(r.read())
    return next(r for r in reversed(seen) if r["path"] == path)




def test_cohere_sdk_v2_bare_name_reaches_cohere(rr, mock):
    co = cohere.ClientV2(api_key=MASTER_KEY, base_url=rr)
    out = co.rerank(model="rerank-v3.5", query="What is the capital of France?", documents=DOCS, top_n=2)
    assert [(r.index, r.relevance_score) for r in out.results] == [(1, 0.8333), (0, 0.3333)]
    assert out.meta.billed_units.search_units == 1
    # One search unit at Cohere's list price; the tokens counted by polyplex.
    assert out.usage["cost"] == 0.002 and out.usage["prompt_tokens"] > 10
    seen = last_request(mock, "/v2/rerank")
    assert seen["headers"]["authorization"] == "Bearer sk-mock-cohere"
    assert seen["body"] == {"model": "rerank-v3.5", "query": "What is the capital of France?",
                            "documents": DOCS, "top_n": 2}
    [record] = records_of(rr, out.id)
    assert (record["endpoint"], record["provider"], record["model"], record["status"]) == \
        ("rerank", "cohere", "rerank-v3.5", 200)
    assert record["cost_usd"] == 0.002


def test_cohere_sdk_v1_documents_returned_by_the_gateway(rr, mock):
    co = cohere.Client(api_key=MASTER_KEY, base_url=rr)
    out = co.rerank(model="cohere/rerank-v3.5", query="capital",
                    documents=[{"text": d} for d in DOCS], return_documents=True, top_n=1)
    assert [(r.index, r.document.text) for r in out.results] == [(1, DOCS[1])]
    # Cohere's v2 API takes neither `return_documents` nor objects: the gateway keeps them.
    assert last_request(mock, "/v2/rerank")["body"]["documents"] == DOCS
    # A configured search-unit price; 101 documents are two units.
    out = co.rerank(model="rerank-english-v3.0", query="q", documents=["d"] * 101)
    assert (out.meta.billed_units.search_units, out.usage["cost"]) == (2, 0.002)


def test_an_openai_compatible_reranker_and_failover(rr, mock, fault):
    client = openai.OpenAI(base_url=rr + "/v1", api_key=MASTER_KEY, max_retries=0)
    r = client.post(
        "/rerank", cast_to=httpx.Response,
        body={"model": "jina/jina-reranker-v2", "query": "blue sky", "documents": DOCS,
              "return_documents": True, "user": "ranker-user", "metadata": {"team": "search"}})
    out = r.json()
    assert r.headers["x-polyplex-provider"] == "jina"
    assert [x["index"] for x in out["results"]] == [0, 1, 2]
    assert out["results"][0]["document"] == {"text": DOCS[0]}
    # The upstream's own token count, at the configured input price.
    tokens = out["usage"]["prompt_tokens"]
    assert tokens == 2 + 4 + 6 + 4 and out["usage"]["cost"] == pytest.approx(tokens * 20.0 / 1e6)
    body = last_request(mock, "/v1/rerank")["body"]
    assert body == {"model": "jina-reranker-v2", "query": "blue sky", "documents": DOCS}
    [record] = records_of(rr, out["id"])
    assert (record["user"], record["metadata"]) == ("ranker-user", {"team": "search"})
    # The route's first deployment fails: the second serves.
    fault(fault="500", count=1, model="jina-reranker-v2")
    r = client.post("/rerank", cast_to=httpx.Response,
                    body={"model": "ranker", "query": "q", "documents": ["a"]})
    assert (r.headers["x-polyplex-provider"], r.headers["x-polyplex-attempts"]) == ("jina-backup", "2")


def test_cohere_on_bedrock(rr, mock):
    co = cohere.ClientV2(api_key=MASTER_KEY, base_url=rr)
    out = co.rerank(model="bedrock/cohere.rerank-v3-5:0", query="capital of France", documents=DOCS)
    assert [r.index for r in out.results] == [1, 2, 0]
    # Bedrock says no search units: one per query of up to 100 documents, at Cohere's price.
    assert (out.meta.billed_units.search_units, out.usage["cost"]) == (1, 0.002)
    seen = last_request(mock, "/model/cohere.rerank-v3-5%3A0/invoke")
    assert seen["body"] == {"query": "capital of France", "documents": DOCS, "api_version": 2}
    assert seen["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAPOLYPLEXMOCK/")
    with pytest.raises(cohere.BadRequestError) as e:
        co.rerank(model="bedrock/amazon.rerank-v1:0", query="q", documents=["a"])
    assert "Cohere's models only" in e.value.body["error"]["message"]


def test_refusals_name_what_is_wrong(rr):
    co = cohere.ClientV2(api_key=MASTER_KEY, base_url=rr)
    with pytest.raises(cohere.BadRequestError) as e:
        co.rerank(model="rerank-v3.5", query="", documents=DOCS)
    assert e.value.body["error"]["param"] == "query"
    client = openai.OpenAI(base_url=rr + "/v1", api_key=MASTER_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/rerank", cast_to=object,
                    body={"model": "rerank-v3.5", "query": "q", "documents": ["a", {"title": "b"}]})
    assert e.value.body["param"] == "documents[1].text"
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/rerank", cast_to=object,
                    body={"model": "anthropic/claude-haiku-4-5", "query": "q", "documents": ["a"]})
    assert "does not offer /v1/rerank" in e.value.message
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=rr + "/v1", api_key="wrong", max_retries=0).post(
            "/rerank", cast_to=object, body={"model": "rerank-v3.5", "query": "q", "documents": ["a"]})
    # A key limited to Jina's reranker may not use Cohere's.
    status, k = admin(rr, "POST", "/admin/keys", {"name": "jina-only", "models": ["jina/*"]})
    assert status == 200
    mine = cohere.ClientV2(api_key=k["key"], base_url=rr)
    with pytest.raises(cohere.ForbiddenError):
        mine.rerank(model="rerank-v3.5", query="q", documents=["a"])
    assert mine.rerank(model="jina/jina-reranker-v2", query="q", documents=["a"]).results[0].index == 0
