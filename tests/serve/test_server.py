"""`spac-serve` against the official openai client, on a real server process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from .conftest import Server

PROMPT = "def fibonacci(n):"


def _spac_run(bundle, prompt: str, n: int) -> list[int]:
    out = subprocess.run([sys.executable, "-m", "spac_ort.cli.run", str(bundle), "-p", prompt, "-n", str(n), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["generated_token_ids"]


def _complete(server, prompt: str = PROMPT, n: int = 24, **kwargs):  # type: ignore[no-untyped-def]
    return server.client().completions.create(model=server.model, prompt=prompt, max_tokens=n, temperature=0,
                                              extra_body={"return_token_ids": True}, **kwargs)


def _metrics(server) -> dict[str, float]:
    text = urllib.request.urlopen(f"{server.url}/metrics").read().decode()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if not line.startswith("#")}


def test_greedy_completion_equals_spac_run(server, chat_bundle):
    expected = _spac_run(chat_bundle, PROMPT, 24)
    r = _complete(server)
    choice = r.choices[0]
    assert choice.model_extra["token_ids"] == expected
    assert r.usage.completion_tokens == len(expected) and r.usage.prompt_tokens > 0
    assert choice.finish_reason in ("length", "stop")


def test_streaming_equals_non_streaming(server):
    whole = _complete(server, n=32)
    chunks = list(server.client().completions.create(model=server.model, prompt=PROMPT, max_tokens=32, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text and text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_chat_uses_the_bundles_template(server, chat_bundle):
    from spac_ort.runtime.tokenizer import Tokenizer

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a loop."}]
    client = server.client()
    r = client.chat.completions.create(model=server.model, messages=messages, max_tokens=20, temperature=0)
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    ids = Tokenizer(chat_bundle / "tokenizer" / "tokenizer.json").encode(rendered + "<|im_start|>assistant\n",
                                                                           special=False)
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.role == "assistant"
    expected = _spac_run_ids(chat_bundle, ids, 20)
    assert r.usage.completion_tokens == len(expected)
    streamed = client.chat.completions.create(model=server.model, messages=messages, max_tokens=20, temperature=0,
                                              stream=True)
    parts = [c.choices[0].delta.content or "" for c in streamed]
    assert "".join(parts) == r.choices[0].message.content


def _spac_run_ids(bundle, ids: list[int], n: int) -> list[int]:
    from spac_ort.runtime import Generator

    with Generator.from_bundle(bundle) as gen:
        return list(gen.generate(ids, max_new_tokens=n))


def test_stop_sequence_cuts_the_text(server):
    full = _complete(server, n=24).choices[0].text
    stop = full[5:8]
    assert stop and stop in full
    cut = _complete(server, n=24, stop=[stop]).choices[0]
    assert cut.text == full[:full.index(stop)]
    assert cut.finish_reason == "stop"
    streamed = server.client().completions.create(model=server.model, prompt=PROMPT, max_tokens=24, temperature=0,
                                                  stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut.text


def test_concurrent_clients_all_complete(server):
    prompts = [PROMPT, "import numpy as np", "The river", "class Tree:", "SELECT", "Once upon"]
    alone = {p: _complete(server, p, 16).choices[0].model_extra["token_ids"] for p in prompts}
    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(lambda p: _complete(server, p, 16), prompts))
    assert [r.choices[0].model_extra["token_ids"] for r in results] == [alone[p] for p in prompts]


def test_disconnect_mid_stream_cancels_and_the_server_keeps_serving(server):
    before = _metrics(server)
    stream = server.client().completions.create(model=server.model, prompt=PROMPT, max_tokens=2000, temperature=0,
                                                stream=True)
    next(iter(stream))
    stream.close()
    for _ in range(100):
        after = _metrics(server)
        if after['spac_requests_total{outcome="cancelled"}'] > before['spac_requests_total{outcome="cancelled"}']:
            break
        threading.Event().wait(0.05)
    assert after['spac_requests_total{outcome="cancelled"}'] == before['spac_requests_total{outcome="cancelled"}'] + 1
    assert after["spac_completion_tokens_total"] - before["spac_completion_tokens_total"] < 2000
    assert _complete(server, n=4).usage.completion_tokens == 4


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"model": "other", "prompt": "x"}).encode(), 404, "model"),
    (json.dumps({"prompt": "x"}).encode(), 400, "model"),
    (json.dumps({"model": "M", "prompt": "x", "n": 2}).encode(), 400, "n"),
    (json.dumps({"model": "M", "prompt": "x", "temperature": -1}).encode(), 400, "temperature"),
    (json.dumps({"model": "M", "prompt": "x", "top_p": 0}).encode(), 400, "top_p"),
    (json.dumps({"model": "M", "prompt": "x", "max_tokens": 0}).encode(), 400, "max_tokens"),
    (json.dumps({"model": "M", "prompt": "x", "seed": -3}).encode(), 400, "seed"),
    (json.dumps({"model": "M", "prompt": "x", "stop": [1]}).encode(), 400, "stop"),
    (json.dumps({"model": "M", "prompt": "x", "logprobs": 3}).encode(), 400, "logprobs"),
    (json.dumps({"model": "M", "prompt": "x", "frobnicate": 1}).encode(), 400, "frobnicate"),
    (json.dumps({"model": "M", "prompt": ""}).encode(), 400, "prompt"),
    (json.dumps({"model": "M", "prompt": [10 ** 9]}).encode(), 400, "prompt"),
    (json.dumps({"model": "M", "prompt": "word " * 5000}).encode(), 400, "prompt"),
    (json.dumps({"model": "M", "messages": []}).encode(), 400, "messages"),
    (json.dumps({"model": "M", "messages": [{"role": "user"}]}).encode(), 400, "messages"),
])
def test_bad_requests_get_a_json_4xx_and_the_server_keeps_serving(server, body, status, field):
    body = body.replace(b'"M"', json.dumps(server.model).encode())
    path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
    req = urllib.request.Request(server.url + path, data=body, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req)
    assert info.value.code == status
    error = json.loads(info.value.read())["error"]
    assert error["message"] and error["param"] == field
    assert urllib.request.urlopen(f"{server.url}/health").status == 200


def test_openai_client_errors_and_unknown_routes(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=server.model, prompt="x", n=2)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{server.url}/v1/embeddings")
    assert info.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{server.url}/v1/completions")
    assert info.value.code == 405
    assert [m.id for m in client.models.list()] == [server.model]


def test_a_full_queue_refuses_with_429_and_no_template_refuses_chat(demo_bundle):
    srv = Server(demo_bundle, "--queue-size", "1", "--no-speculative")
    try:
        client = srv.client()
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            client.chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "hi"}])

        def long(_):  # type: ignore[no-untyped-def]
            try:
                return client.completions.create(model=srv.model, prompt=PROMPT, max_tokens=400, temperature=0)
            except openai.RateLimitError:
                return None

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(long, range(6)))
        assert any(r is None for r in results) and any(r is not None for r in results)
        assert _metrics(srv)['spac_requests_total{outcome="rejected"}'] == sum(r is None for r in results)
    finally:
        srv.stop()


def test_sigterm_drains_the_request_in_flight(demo_bundle):
    srv = Server(demo_bundle, "--no-speculative")
    stream = iter(srv.client().completions.create(model=srv.model, prompt=PROMPT, max_tokens=600, temperature=0,
                                                  stream=True, stream_options={"include_usage": True}))
    next(stream)                                      # the generation runs
    srv.proc.send_signal(signal.SIGTERM)
    rest = list(stream)
    assert rest[-1].usage.completion_tokens == 600   # finished, not cut
    assert srv.proc.wait(60) == 0
    threading.Event().wait(0.2)
    assert any("stopped after 1 requests" in line for line in srv.lines)
