"""OpenAI request bodies -> typed requests; results -> response bodies. Pure: no server,
no generator.

    req = parse_completion(body, served="demo-bundle")     # RequestError(400/404) if bad
    body = completion_body(req, result, created=..., rid=...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

DEFAULT_COMPLETION_TOKENS = 16      # OpenAI's default max_tokens for /v1/completions
MAX_STOPS = 4

# every field read here, plus "user", "metadata", "store": accepted, without effect on the output
_KNOWN = {"model", "user", "stream_options", "prompt", "messages", "stream", "max_tokens", "max_completion_tokens",
            "temperature", "top_p", "seed", "stop", "n", "return_token_ids", "metadata", "store"}
# accepted only at their neutral value
_NEUTRAL: dict[str, Any] = {"presence_penalty": 0, "frequency_penalty": 0, "best_of": 1, "echo": False,
                            "logprobs": None, "top_logprobs": None, "suffix": None, "logit_bias": None,
                            "tools": None, "tool_choice": None, "response_format": None}


class RequestError(Exception):
    """A request the server cannot run: HTTP status, message, and the offending field."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = {404: "not_found_error", 429: "rate_limit_error", 503: "service_unavailable"}.get(
            self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Request:
    """One generation request, validated."""

    chat: bool
    prompt: Union[str, tuple[int, ...], None] = None          # completions: text or token ids
    messages: tuple[dict[str, str], ...] = ()                  # chat: role/content pairs
    max_tokens: Optional[int] = None                           # None: until the model's positions run out
    temperature: float = 1.0
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    return_token_ids: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """What a finished generation hands back."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str                                          # "stop" or "length"


def _number(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(400, f"'{key}' must be a number in [{lo:g}, {hi:g}]", key)
    if not lo <= value <= hi:
        raise RequestError(400, f"'{key}' is {value:g}; it must be in [{lo:g}, {hi:g}]", key)
    return float(value)


def _integer(body: dict, key: str, lo: int) -> Optional[int]:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise RequestError(400, f"'{key}' must be an integer of at least {lo}", key)
    return value


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise RequestError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    return tuple(stops)


def _common(body: Any, served: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise RequestError(400, "'model' is required: the name /v1/models lists", "model")
    if model != served:
        raise RequestError(404, f"model '{model}' does not exist; this server serves '{served}'", "model",
                           "model_not_found")
    for key, neutral in _NEUTRAL.items():
        if body.get(key, neutral) not in (neutral, None):
            raise RequestError(400, f"'{key}' is not supported by this server; leave it out", key)
    unknown = sorted(set(body) - _KNOWN - set(_NEUTRAL))
    if unknown:
        raise RequestError(400, f"unknown field '{unknown[0]}'", unknown[0])
    if _integer(body, "n", 1) not in (None, 1):
        raise RequestError(400, "'n' must be 1: the server generates one choice per request", "n")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "'stream_options' must be an object", "stream_options")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", "stream")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise RequestError(400, "'seed' must be a non-negative integer", "seed")
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise RequestError(400, "'top_p' is 0; it must be in (0, 1]", "top_p")
    return dict(temperature=_number(body, "temperature", 1.0, 0.0, 2.0), top_p=top_p, seed=seed, stop=_stops(body), stream=stream,
                include_usage=bool(options.get("include_usage", False)),
                return_token_ids=body.get("return_token_ids") is True)


def parse_completion(body: Any, served: str, vocab_size: int) -> Request:
    """A /v1/completions body: ``prompt`` is text, one text in a list, or token ids."""
    common = _common(body, served)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size
                                 for t in prompt):
            raise RequestError(400, f"'prompt' as token ids must be a non-empty list of integers in "
                                    f"0..{vocab_size - 1}", "prompt")
        prompt = tuple(prompt)
    elif not isinstance(prompt, str) or not prompt:
        raise RequestError(400, "'prompt' must be a non-empty string (one prompt per request) or a list of "
                                "token ids", "prompt")
    max_tokens = _integer(body, "max_tokens", 1)
    return Request(chat=False, prompt=prompt, max_tokens=DEFAULT_COMPLETION_TOKENS if max_tokens is None
                   else max_tokens, **common)


def parse_chat(body: Any, served: str) -> Request:
    """A /v1/chat/completions body: ``messages`` of role and text content."""
    common = _common(body, served)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):          # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise RequestError(400, f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(content, str):
            raise RequestError(400, f"messages[{i}] must have a string 'role' and text 'content'", "messages")
        out.append({"role": m["role"], "content": content})
    max_tokens = _integer(body, "max_completion_tokens", 1) or _integer(body, "max_tokens", 1)
    return Request(chat=True, messages=tuple(out), max_tokens=max_tokens, **common)


def usage(result: Result) -> dict[str, int]:
    n = len(result.token_ids)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": n, "total_tokens": result.prompt_tokens + n}


def _choice(req: Request, text: Optional[str], finish: Optional[str], delta: bool,
            token_ids: Optional[list[int]] = None, first: bool = False) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0}
    if req.chat and delta:
        d: dict[str, Any] = {"role": "assistant"} if first else {}
        if text:
            d["content"] = text
        choice["delta"] = d
    elif req.chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice.update(text=text or "", logprobs=None)
    choice["finish_reason"] = finish
    if req.return_token_ids and token_ids is not None:
        choice["token_ids"] = token_ids
    return choice


def response_body(req: Request, result: Result, *, rid: str, created: int, model: str) -> dict[str, Any]:
    """The whole response of a non-streaming request."""
    return {"id": rid, "object": "chat.completion" if req.chat else "text_completion", "created": created,
            "model": model, "choices": [_choice(req, result.text, result.finish_reason, False, result.token_ids)],
            "usage": usage(result)}


def chunk_body(req: Request, *, rid: str, created: int, model: str, text: str = "", finish: Optional[str] = None,
               token_ids: Optional[list[int]] = None, first: bool = False,
               result: Optional[Result] = None) -> dict[str, Any]:
    """One server-sent event of a streaming request; with ``result`` the usage-only chunk."""
    body: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk" if req.chat else "text_completion",
                            "created": created, "model": model}
    if result is not None:
        body.update(choices=[], usage=usage(result))
    else:
        body["choices"] = [_choice(req, text, finish, True, token_ids, first)]
    return body
