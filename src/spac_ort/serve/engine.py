"""One generator, warm for the server's lifetime, run by one worker thread.

Requests queue (bounded: a full queue refuses with 429) and run one at a time (batch 1).
A job streams events back to the event loop of the request that submitted it:
``("text", str)`` pieces, then ``("done", Result)`` or ``("error", RequestError)``. A
cancelled job (its client went away) stops at the next token; one still queued never runs.

    engine = Engine(gen, queue_size=16)
    job = engine.submit(request, loop)       # RequestError: 400 bad prompt, 429 full, 503 closing
    event = await job.events.get()
    engine.close()                           # after the last request: stop the worker
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any, Optional, Union

from ..errors import SpacError
from ..runtime import Generator, SamplingConfig
from ..runtime.tokenizer import StreamDecoder
from .chat import ChatTemplate
from .metrics import Metrics
from .protocol import Request, RequestError, Result
from .stops import StopMatcher

log = logging.getLogger(__name__)


class Job:
    def __init__(self, request: Request, ids: list[int], sampling: SamplingConfig, max_tokens: int,
                 loop: asyncio.AbstractEventLoop):
        self.request, self.ids, self.sampling, self.max_tokens = request, ids, sampling, max_tokens
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self._loop = loop

    def emit(self, kind: str, value: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:                     # the request's loop is gone: nobody listens
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    def __init__(self, gen: Generator, *, queue_size: int = 16, draft_tokens: Union[int, str] = "auto",
                 speculative: Optional[bool] = None, lookup: bool = True, template: Optional[ChatTemplate] = None):
        self.gen = gen
        self.template = template
        self.draft_tokens, self.speculative, self.lookup = draft_tokens, speculative, lookup
        self.metrics = Metrics(gen.experts.mark())
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._closing = False
        self._worker = threading.Thread(target=self._run, name="spac-serve-generator", daemon=True)
        self._worker.start()

    # ---- the event loop's side ---------------------------------------------------------
    def prompt_ids(self, req: Request) -> list[int]:
        """The request's prompt as token ids, checked against the model's positions."""
        tok = self.gen.tokenizer
        if req.chat:
            if self.template is None:
                raise RequestError(400, "this model has no chat template; use /v1/completions with a prompt",
                                   "messages")
            ids = tok.encode(self.template.render(req.messages), special=False) if tok else []
        elif isinstance(req.prompt, str):
            if tok is None:
                raise RequestError(400, "this bundle has no tokenizer; send the prompt as a list of token ids",
                                   "prompt")
            ids = tok.encode(req.prompt)
        else:
            ids = list(req.prompt or ())
        limit = self.gen.manifest.dims.max_positions
        if not ids or len(ids) >= limit:
            raise RequestError(400, f"the prompt has {len(ids)} tokens; the model takes 1 to {limit - 1}",
                               "messages" if req.chat else "prompt", "context_length_exceeded")
        return ids

    def submit(self, req: Request, loop: asyncio.AbstractEventLoop) -> Job:
        if self._closing:
            raise RequestError(503, "the server is shutting down")
        ids = self.prompt_ids(req)
        try:
            sampling = SamplingConfig(temperature=req.temperature, top_p=req.top_p, seed=req.seed)
        except SpacError as exc:
            raise RequestError(400, str(exc)) from None
        room = self.gen.manifest.dims.max_positions - len(ids)
        job = Job(req, ids, sampling, min(req.max_tokens or room, room), loop)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.metrics.count("rejected")
            raise RequestError(429, f"{self._queue.maxsize} requests are waiting; retry later") from None
        self.metrics.queued = self._queue.qsize()
        return job

    def close(self, timeout: Optional[float] = None) -> None:
        """Refuse new requests, let the worker finish the queue, stop it, free the generator."""
        self._closing = True
        self._queue.put(None)
        self._worker.join(timeout)
        self.gen.close()

    # ---- the worker thread -------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            self.metrics.queued = self._queue.qsize()
            if job is None:
                return
            if job.cancelled.is_set():
                self.metrics.count("cancelled")
                continue
            try:
                result = self._generate(job)
            except SpacError as exc:
                self.metrics.count("error")
                job.emit("error", RequestError(400, str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - a bug fails its request, not the server
                log.exception("generation failed")
                self.metrics.count("error")
                job.emit("error", RequestError(500, f"internal error {type(exc).__name__}; see the server log"))
                continue
            self.metrics.finish(self.gen.report, job.cancelled.is_set(), self.gen.experts)
            job.emit("done", result)

    def _generate(self, job: Job) -> Result:
        gen, req = self.gen, job.request
        tokens = gen.generate(job.ids, max_new_tokens=job.max_tokens, sampling=job.sampling,
                              draft_tokens=self.draft_tokens, speculative=self.speculative,
                              lookup=self.lookup)
        decoder = StreamDecoder(gen.tokenizer) if gen.tokenizer else None
        stops = StopMatcher(req.stop)
        out: list[int] = []
        text: list[str] = []
        finish = "length"
        try:
            for token in tokens:
                out.append(token)
                piece, stopped = stops.push(decoder.push(token) if decoder else "")
                if piece:
                    text.append(piece)
                    job.emit("text", piece)
                if stopped or job.cancelled.is_set():
                    finish = "stop"
                    break
            else:
                finish = "stop" if gen.report.stop_reason == "eos" else "length"
                rest = stops.flush()
                if rest:
                    text.append(rest)
                    job.emit("text", rest)
        finally:
            tokens.close()                       # the report's totals are written on close
        return Result("".join(text), out, len(job.ids), finish)
