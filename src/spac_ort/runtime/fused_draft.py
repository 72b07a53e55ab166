"""The draft as one fused graph (bundles exported with fused graphs): one prebound call per
draft step, its KV cache updated in place (`FusedKV`); rollback is a length change."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import naming
from ..errors import BundleError
from ..manifest import DraftSpec
from .draft import DraftShape
from .fused import CACHED_PLANS, WARM_PAST, SharedInputs
from .fused_kv import FusedKV, first_capacity, kv_dtype, ortvalue
from .sampling import check_finite
from .sessions import CPU, Piece, bound_again, off_host
from . import widths

_MAX_TABLE = 1 << 17       # rotary table rows (positions) at most


class FusedDraft:
    def __init__(self, graph: Path, spec: DraftSpec, providers: Sequence[str] = (CPU,),
                 kv_device: Optional[str] = None):
        self.piece = Piece(graph, providers)
        self.kv_device = kv_device          # "cuda": the cache on the GPU (`fused_kv.kv_device`)
        n = spec.num_layers
        cache = [naming.fused_draft_cache(i, w) for i in range(n) for w in (naming.PAST_KEY, naming.PAST_VALUE)]
        want = (naming.INPUT_IDS, *cache, naming.SEQLENS_K, naming.TOTAL_LENGTH, naming.COS_CACHE, naming.SIN_CACHE)
        if self.piece.inputs != want:
            raise BundleError(f"draft graph {graph} has inputs {list(self.piece.inputs)}, a fused draft takes "
                              f"{list(want)}; re-export the bundle")
        self.kv_dtype = kv_dtype(self.piece.session, naming.fused_draft_cache(0, naming.PAST_KEY))
        self.shape = DraftShape(n, spec.num_kv_heads, spec.head_dim, spec.vocab_size)
        self.max_positions = min(spec.max_positions, _MAX_TABLE)
        self.shared_inputs = SharedInputs(spec.rope_theta, spec.head_dim, self.max_positions, kv_device)
        self._plans: dict[int, _Plan] = {}
        self._generation = -1
        self.replay = None          # a runtime.tape.Replay: the draft's proposals from a recorded run

    def new_cache(self) -> FusedKV:
        s = self.shape
        return FusedKV(s.num_layers, s.num_kv_heads, s.head_dim, s.head_dim,
                       first_capacity(self.kv_device, self.max_positions), self.kv_device, self.kv_dtype)

    def warm(self, widths: Sequence[int]) -> None:
        """Run the draft graph once at every step width in ``widths`` on a scratch cache (see
        `FusedBackbone.warm`)."""
        scratch = self.new_cache()
        for t in widths:
            scratch.reserve(WARM_PAST + t)
            self.shared_inputs.set_length(WARM_PAST + t)
            _Plan(self, t, scratch).run()

    def forward(self, ids: Sequence[int], cache: FusedKV) -> np.ndarray:
        """Feed T tokens after the cache; returns logits of the last one, [V]. With the
        cache on a device, a feed wider than a decoding window runs as `widths.pieces`."""
        done = 0
        for t in widths.feed(len(ids), self.kv_device):
            plan = self._feed(ids[done:done + t], cache)
            done += t
        out = plan.logits[0, 0].copy()                                               # [V]
        check_finite(out, "draft model", cache.length)
        if self.replay is not None:
            self.replay.draft(out, cache.length)
        return out

    def _feed(self, ids: Sequence[int], cache: FusedKV) -> "_Plan":
        t, p = len(ids), cache.length
        cache.reserve(p + t)
        plan = self._plan(t, cache)
        plan.input_ids[0] = ids
        self.shared_inputs.set_length(p + t)
        plan.run()
        cache.length = p + t
        return plan

    def _plan(self, t: int, cache: FusedKV) -> "_Plan":
        if cache.generation != self._generation:           # another cache, or its buffers moved
            for plan in self._plans.values():
                plan.rebind(cache)
            self._generation = cache.generation
        plan = self._plans.get(t) or _Plan(self, t, cache)
        if t <= CACHED_PLANS:       # draft steps and catch-ups keep their bindings; prompts do not
            self._plans[t] = plan
        return plan


class _Plan:
    """The buffers and the binding of one step length."""

    def __init__(self, draft: FusedDraft, t: int, cache: FusedKV):
        session = draft.piece.session
        self.binding = b = session.io_binding()
        self.input_ids = np.zeros((1, t), np.int64)
        self.logits = np.zeros((1, 1, draft.shape.vocab_size), np.float32)
        self.values = [ortvalue(self.input_ids), ortvalue(self.logits)]
        b.bind_ortvalue_input(naming.INPUT_IDS, self.values[0])
        b.bind_ortvalue_output(naming.LOGITS, self.values[1])
        self._layers = draft.shape.num_layers
        self.rebind(cache)
        inputs = {naming.INPUT_IDS: self.values[0], **draft.shared_inputs.values}
        for name, value in draft.shared_inputs.values.items():
            b.bind_ortvalue_input(name, value)
        run, raw = session._sess.run_with_iobinding, b._iobinding
        self._call = lambda: run(raw, None)    # noqa: E731  (the binding's C++ call)
        if off_host(session):                  # a device session copies inputs when they are bound
            kv = (lambda: self.rebind(self.cache)) if draft.kv_device is None else None    # a device cache is read in place
            self._call = bound_again(self._call, b, inputs, kv)

    def rebind(self, cache: FusedKV) -> None:
        """Bind ``cache``'s buffers as every layer's past and present key/value."""
        for i in range(self._layers):
            cache.bind(self.binding, i, tuple(naming.fused_draft_cache(i, n) for n in naming.KV_NAMES))
        self.cache = cache

    def run(self) -> None:
        self._call()
