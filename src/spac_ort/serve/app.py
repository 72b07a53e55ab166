"""The HTTP side: OpenAI-compatible routes over one `Engine` (Starlette).

    GET  /health                 {"status": "ok"}
    GET  /v1/models              the one model this server serves
    POST /v1/completions         text completion, streaming (SSE) or not
    POST /v1/chat/completions    chat, where the bundle has a chat template
    GET  /metrics                Prometheus text
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Optional

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .engine import Engine, Job
from .protocol import Request, RequestError, chunk_body, parse_chat, parse_completion, response_body

MAX_BODY_BYTES = 4 << 20
_POLL_SECONDS = 0.25           # a waiting non-streaming request checks its client this often


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _sse(body: Any) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def build_app(engine: Engine, model: str) -> Starlette:
    """The ASGI app; closing it (lifespan shutdown) closes the engine."""
    created = int(time.time())
    vocab = engine.gen.manifest.dims.vocab_size

    async def health(request: HttpRequest) -> Response:
        return JSONResponse({"status": "ok", "model": model})

    async def models(request: HttpRequest) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model", "created": created,
                                                        "owned_by": "spac-ort"}]})

    async def metrics(request: HttpRequest) -> Response:
        return PlainTextResponse(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    async def completions(request: HttpRequest) -> Response:
        return await _generate(request, lambda body: parse_completion(body, model, vocab))

    async def chat(request: HttpRequest) -> Response:
        return await _generate(request, lambda body: parse_chat(body, model))

    async def _generate(http: HttpRequest, parse: Callable[[Any], Request]) -> Response:
        try:
            req = parse(await _json(http))
            job = engine.submit(req, asyncio.get_running_loop())
        except RequestError as exc:
            return _error(exc)
        rid = f"{'chatcmpl' if req.chat else 'cmpl'}-{uuid.uuid4().hex}"
        meta = dict(rid=rid, created=int(time.time()), model=model)
        if req.stream:
            return StreamingResponse(_stream(job, meta), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        event = await _outcome(job, http)
        if event is None:
            return Response(status_code=499)     # the client went away; nobody reads this
        kind, value = event
        return _error(value) if kind == "error" else JSONResponse(response_body(req, value, **meta))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.close)

    routes = [Route("/health", health), Route("/v1/models", models), Route("/metrics", metrics),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: _not_found, 405: _not_allowed})


async def _json(http: HttpRequest) -> Any:
    size = int(http.headers.get("content-length") or 0)
    if size > MAX_BODY_BYTES:
        raise RequestError(413, f"the request body has {size} bytes; the limit is {MAX_BODY_BYTES}")
    raw = await http.body()
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the request body is not valid JSON ({exc})") from None


async def _outcome(job: Job, http: HttpRequest) -> Optional[tuple[str, Any]]:
    """The job's final event ("done" or "error"), or None when the client disconnected
    first (the job is cancelled)."""
    while True:
        try:
            kind, value = await asyncio.wait_for(job.events.get(), _POLL_SECONDS)
        except asyncio.TimeoutError:
            if await http.is_disconnected():
                job.cancel()
                return None
            continue
        if kind != "text":
            return kind, value


async def _stream(job: Job, meta: dict[str, Any]) -> AsyncIterator[str]:
    """Server-sent events of one streaming job; a disconnect cancels it (finally)."""
    req = job.request
    first = True
    try:
        while True:
            kind, value = await job.events.get()
            if kind == "text":
                yield _sse(chunk_body(req, text=value, first=first, **meta))
                first = False
            elif kind == "error":
                yield _sse(value.body())
                break
            else:
                yield _sse(chunk_body(req, finish=value.finish_reason, first=first, token_ids=value.token_ids,
                                      **meta))
                if req.include_usage:
                    yield _sse(chunk_body(req, result=value, **meta))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()                             # no-op after the last event; stops a generation otherwise


async def _not_found(http: HttpRequest, exc: Exception) -> Response:
    return _error(RequestError(404, f"no route {http.url.path}; see /v1/models, /v1/completions, "
                                    "/v1/chat/completions, /health, /metrics"))


async def _not_allowed(http: HttpRequest, exc: Exception) -> Response:
    return _error(RequestError(405, f"{http.method} is not allowed on {http.url.path}"))
