"""Moderations, images and audio through the official `openai` SDK: passed
through to the OpenAI-protocol providers that serve the model, with the
gateway's keys, routing, failover, headers and usage records — JSON
bodies and multipart forms alike, the model's name changed to the
deployment's on the way."""
import base64
import io
import json
import urllib.request

import openai
import pytest

from conftest import admin, own_gateway, own_mock, records_of


@pytest.fixture(scope="module")
def media(mock, tmp_path_factory):
    """A gateway with two OpenAI providers that pass any model on (one a
    backup of the other) and an Anthropic one."""
    providers = f"""
[[providers]]
name = "openai"
base_url = "{mock}/v1"
api_key = "sk-mock-provider"
max_retries = 0
[[providers]]
name = "backup"
kind = "openai"
catalog = "openai"
base_url = "{mock}/v1"
api_key = "sk-mock-provider"
max_retries = 0
[[providers]]
name = "anthropic"
base_url = "{mock}"
api_key = "sk-mock-provider"
[[providers]]
name = "azure"
kind = "azure"
base_url = "{mock}"
api_key = "sk-mock-azure"
models = ["gpt-image-1", "tts-hd"]
[[providers]]
name = "azure-v1"
kind = "azure"
catalog = "azure"
base_url = "{mock}/openai/v1"
api_key = "sk-mock-azure"
api_version = "2024-10-21"
models = ["gpt-image-1", "tts-hd"]
"""
    with own_gateway(tmp_path_factory.mktemp("media"), providers) as (client, proc):
        yield client


def last_request(mock, path):
    with urllib.request.urlopen(mock + "/__mock/requests", timeout=5) as r:
        seen = json.loads(r.read())
    return next(r for r in reversed(seen) if r["path"] == path)


def test_moderations_default_model_and_provider_prefix(media, mock):
    r = media.moderations.with_raw_response.create(input="I will kill the process")
    assert r.headers["x-polyplex-provider"] in ("openai", "backup")
    out = r.parse()
    assert out.results[0].flagged and out.results[0].categories.violence
    assert last_request(mock, "/v1/moderations")["body"]["model"] == "omni-moderation-latest"
    r = media.moderations.with_raw_response.create(model="backup/omni-moderation-latest", input=["a", "b"])
    assert (r.headers["x-polyplex-provider"], len(r.parse().results)) == ("backup", 2)
    assert last_request(mock, "/v1/moderations")["body"]["model"] == "omni-moderation-latest"


def test_images_generated_and_edited(media, mock):
    out = media.images.generate(model="openai/gpt-image-1", prompt="a red cat", n=2)
    assert len(out.data) == 2
    assert base64.b64decode(out.data[0].b64_json).startswith(b"\x89PNG")
    assert out.usage.output_tokens == 544
    # A form: the file goes on untouched, the model renamed in place.
    png = base64.b64decode(out.data[0].b64_json)
    r = media.images.with_raw_response.edit(
        model="openai/gpt-image-1", image=("cat.png", io.BytesIO(png), "image/png"), prompt="add a hat")
    assert r.headers["x-polyplex-model"] == "gpt-image-1"
    assert r.parse().usage.output_tokens == 272
    seen = last_request(mock, "/v1/images/edits")["body"]
    assert seen["model"] == "gpt-image-1" and seen["image"] == {"file": "cat.png", "bytes": len(png)}
    assert len(media.images.generate(prompt="a cat").data) == 1  # dall-e-2, OpenAI's default


def test_speech_comes_back_as_audio(media):
    r = media.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input="hello there")
    assert r.headers["content-type"] == "audio/mpeg"
    assert r.headers["x-polyplex-provider"] in ("openai", "backup")
    assert r.content == b"ID3hello there"
    r = media.audio.speech.with_raw_response.create(
        model="openai/gpt-4o-mini-tts", voice="alloy", input="hi", response_format="wav")
    assert (r.headers["content-type"], r.content) == ("audio/wav", b"ID3hi")


def test_transcriptions_and_translations(media, mock):
    audio = ("talk.mp3", io.BytesIO(b"ID3" + b"\0" * 4000), "audio/mpeg")
    t = media.audio.transcriptions.create(model="openai/gpt-4o-transcribe", file=audio)
    assert t.text == "Transcript of talk.mp3 (4003 bytes)."
    assert (t.usage.input_tokens, t.usage.output_tokens) == (5, 5)
    assert last_request(mock, "/v1/audio/transcriptions")["body"]["model"] == "gpt-4o-transcribe"
    text = media.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", io.BytesIO(b"RIFF"), "audio/wav"), response_format="text")
    assert text.strip() == "Transcript of a.wav (4 bytes)."
    with pytest.deprecated_call():  # by the SDK, not the API
        tr = media.audio.translations.create(model="whisper-1", file=("a.wav", io.BytesIO(b"RIFF"), "audio/wav"))
    assert tr.text == "Transcript of a.wav (4 bytes)."


def test_a_streamed_transcription_is_passed_on_and_metered(media):
    events = list(media.audio.transcriptions.create(
        model="openai/gpt-4o-mini-transcribe", file=("s.mp3", io.BytesIO(b"ID3" + b"\0" * 2000), "audio/mpeg"),
        stream=True))
    assert [e.type for e in events][-1] == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == events[-1].text
    base = str(media.base_url).removesuffix("/v1/")
    # Its record is written when the stream ends, with the tokens its last event said.
    for _ in range(50):
        status, rep = admin(base, "GET", "/admin/usage?by=model")
        row = next((r for r in rep["data"] if r["model"] == "gpt-4o-mini-transcribe"), None)
        if row:
            break
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (1, 3, 5)


def test_azure_deployments_serve_images_and_audio(media, mock):
    out = media.images.generate(model="azure/gpt-image-1", prompt="a cat")
    assert out.usage.output_tokens == 272
    # (The mock answers images only at the deployment URL for Azure.)
    seen = last_request(mock, "/v1/images/generations")
    assert seen["headers"]["api-key"] == "sk-mock-azure"
    r = media.audio.speech.with_raw_response.create(model="azure/tts-hd", voice="alloy", input="hey")
    assert (r.headers["x-polyplex-provider"], r.content) == ("azure", b"ID3hey")
    with pytest.raises(openai.BadRequestError) as e:
        media.moderations.create(model="azure/tts-hd", input="x")
    assert "does not offer /v1/moderations" in e.value.message
    # Azure's v1 API (a base URL ending in /openai/v1): OpenAI's paths, the deployment in
    # the body, no dated api-version (the mock refuses one there).
    out = media.images.generate(model="azure-v1/gpt-image-1", prompt="a cat")
    assert out.usage.output_tokens == 272
    seen = last_request(mock, "/v1/images/generations")
    assert (seen["headers"]["api-key"], seen["body"]["model"]) == ("sk-mock-azure", "gpt-image-1")
    r = media.audio.speech.with_raw_response.create(model="azure-v1/tts-hd", voice="alloy", input="hey")
    assert (r.headers["x-polyplex-provider"], r.content) == ("azure-v1", b"ID3hey")


def test_refusals_name_what_is_wrong(media):
    with pytest.raises(openai.BadRequestError) as e:
        media.moderations.create(model="anthropic/claude-haiku-4-5", input="x")
    assert "does not offer /v1/moderations" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        media.post("/audio/speech", body={"input": "x", "voice": "alloy"}, cast_to=object)
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        media.images.generate(model="mistral/pixtral-large-latest", prompt="x")  # not configured


def test_failover_keys_and_usage(media, fault, tmp_path):
    # The first deployment fails: the backup serves, and the headers say so.
    fault(fault="500", count=1, model="gpt-image-1")
    r = media.images.with_raw_response.generate(model="gpt-image-1", prompt="a dog")
    assert r.headers["x-polyplex-attempts"] == "2"
    assert r.headers["x-polyplex-fallbacks"] in ("openai/gpt-image-1", "backup/gpt-image-1")
    base = str(media.base_url).removesuffix("/v1/")
    # A key that may use speech only; its usage is recorded with its end user.
    status, k = admin(base, "POST", "/admin/keys", {"name": "voice", "models": ["tts-1"]})
    assert status == 200
    mine = openai.OpenAI(base_url=base + "/v1", api_key=k["key"], max_retries=0)
    mine.audio.speech.create(model="tts-1", voice="alloy", input="hi", extra_body={"user": "caller-9"})
    with pytest.raises(openai.PermissionDeniedError) as e:
        mine.moderations.create(input="x")
    assert "`omni-moderation-latest`" in e.value.message
    # A provider's models by pattern: the names the catalog lacks too.
    status, every = admin(base, "POST", "/admin/keys", {"name": "openai-only", "models": ["openai/*"]})
    theirs = openai.OpenAI(base_url=base + "/v1", api_key=every["key"], max_retries=0)
    r = theirs.moderations.with_raw_response.create(input="x")
    assert r.headers["x-polyplex-provider"] == "openai"
    with pytest.raises(openai.PermissionDeniedError):
        theirs.images.generate(model="backup/gpt-image-1", prompt="x")
    status, rep = admin(base, "GET", "/admin/usage?by=key")
    row = next(r for r in rep["data"] if r["key"] == k["id"])
    assert (row["requests"], row["errors"]) == (2, 1)
    status, rep = admin(base, "GET", "/admin/usage?by=user")
    assert any(r["user"] == "caller-9" and r["requests"] == 1 for r in rep["data"])
    # Tagged by the metadata header, whatever the endpoint.
    tag = {"x-polyplex-metadata": json.dumps({"team": "media-tags"})}
    media.moderations.create(input="x", extra_headers=tag)
    media.audio.speech.create(model="tts-1", voice="alloy", input="hi", extra_headers=tag)
    media.images.generate(model="gpt-image-1", prompt="a cat", extra_headers=tag)
    status, rep = admin(base, "GET", "/admin/usage?by=model&metadata.team=media-tags")
    assert sorted(r["model"] for r in rep["data"]) == ["gpt-image-1", "omni-moderation-latest", "tts-1"]
    status, rep = admin(base, "GET", "/admin/usage?by=model")
    image = next(r for r in rep["data"] if r["model"] == "gpt-image-1")
    assert image["completion_tokens"] >= 544 + 272


def test_a_passed_through_stream_is_recorded_with_its_whole_time(tmp_path):
    """The record of an event stream says how long the whole stream took,
    not only its first byte (a mock pacing its events at 20 a second)."""
    with own_mock("--tokens-per-s", "20") as slow:
        providers = f"""
[[providers]]
name = "openai"
base_url = "{slow}/v1"
api_key = "sk-mock-provider"
"""
        with own_gateway(tmp_path, providers) as (client, _):
            with client.audio.transcriptions.with_streaming_response.create(
                    model="openai/gpt-4o-mini-transcribe", stream=True,
                    file=("s.mp3", io.BytesIO(b"ID3" + b"\0" * 100), "audio/mpeg")) as resp:
                assert resp.read().count(b"transcript.text.delta") >= 4
                rid = resp.headers["x-request-id"]
            [record] = records_of(str(client.base_url).removesuffix("/v1/"), rid)
            assert record["latency_ms"] >= 200 > record["ttft_ms"], record
