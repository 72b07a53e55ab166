"""The server's pure parts: request validation, stop sequences, metrics, chat templates."""

from __future__ import annotations

import pytest

pytest.importorskip("jinja2", reason="the serve extra is not installed (pip install 'spac-ort[serve]')")

from spac_ort.serve.chat import ChatTemplate  # noqa: E402
from spac_ort.serve.protocol import (RequestError, Result, chunk_body, parse_chat, parse_completion,  # noqa: E402
                                     response_body)
from spac_ort.serve.stops import StopMatcher  # noqa: E402


def _feed(stops, pieces):  # type: ignore[no-untyped-def]
    m = StopMatcher(stops)
    out = []
    for p in pieces:
        text, stopped = m.push(p)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + m.flush(), False


@pytest.mark.parametrize("pieces, stops, expected", [
    (["ab", "c\n", "\nd"], ["\n\n"], ("abc", True)),
    (["ab", "c\n", "d"], ["\n\n"], ("abc\nd", False)),
    (["EN", "D"], ["END"], ("", True)),
    (["xE", "Nx"], ["END"], ("xENx", False)),
    (["a", "b"], [], ("ab", False)),
    (["abcSTOPdef"], ["STOP", "cS"], ("ab", True)),
])
def test_stop_matcher(pieces, stops, expected):
    assert _feed(stops, pieces) == expected


def test_held_back_text_never_contains_a_stop_prefix_emitted_early():
    m = StopMatcher(["<|end|>"])
    assert m.push("hello <|") == ("hello ", False)
    assert m.push("en") == ("", False)
    assert m.push("x") == ("<|enx", False)


def test_completion_defaults_and_token_prompts():
    r = parse_completion({"model": "m", "prompt": [1, 2, 3]}, "m", 10)
    assert r.prompt == (1, 2, 3) and r.max_tokens == 16 and r.temperature == 1.0 and not r.stream
    r = parse_completion({"model": "m", "prompt": ["hi"], "stop": "x", "seed": 4, "stream": True}, "m", 10)
    assert r.prompt == "hi" and r.stop == ("x",) and r.seed == 4 and r.stream


@pytest.mark.parametrize("body, status", [
    ({"model": "m", "prompt": "x", "stop": ["a"] * 5}, 400),
    ({"model": "m", "prompt": ["a", "b"]}, 400),
    ({"model": "m", "prompt": "x", "stream": "yes"}, 400),
    ({"model": "m", "prompt": "x", "temperature": float("nan")}, 400),
    ({"model": "m", "prompt": "x", "max_tokens": True}, 400),
    ({"model": "x", "prompt": "x"}, 404),
    ("text", 400),
])
def test_bad_completion_bodies(body, status):
    with pytest.raises(RequestError) as info:
        parse_completion(body, "m", 10)
    assert info.value.status == status and info.value.body()["error"]["message"]


def test_chat_parts_and_bodies():
    r = parse_chat({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                              {"type": "text", "text": "b"}]}],
                    "max_completion_tokens": 5}, "m")
    assert r.messages == ({"role": "user", "content": "ab"},) and r.max_tokens == 5 and r.chat
    result = Result("hi", [1, 2], 3, "stop")
    body = response_body(r, result, rid="x", created=1, model="m")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    first = chunk_body(r, rid="x", created=1, model="m", text="h", first=True)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "h"}
    assert chunk_body(r, rid="x", created=1, model="m", result=result)["choices"] == []


def test_chat_template_renders_and_is_sandboxed():
    t = ChatTemplate("{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
                     "{% if add_generation_prompt %}[assistant]{% endif %}", bos_token="<s>")
    assert t.render([{"role": "user", "content": "hi"}]) == "<s>[user]hi[assistant]"
    hostile = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(RequestError) as info:
        hostile.render([])
    assert info.value.status == 400
    refusing = ChatTemplate("{{ raise_exception('only user turns') }}")
    with pytest.raises(RequestError, match="only user turns"):
        refusing.render([])
    with pytest.raises(ValueError, match="does not compile"):
        ChatTemplate("{% for %}")
