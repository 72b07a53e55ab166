"""The target model's forward pass over a bundle with fused graphs, as prebound calls.

    ids [T] -> embed -> for each layer:
                          layer graph: residual + norm, attention (KV cache updated in
                                       place), post-norm, router -> normed, ids, weights
                          experts:     one com.microsoft.MoE call (resident), or the
                                       expert backend on the host (tiers, other backends)
               -> final graph: residual + norm + lm_head at the rows asked for -> logits

Every value between calls lives in a numpy buffer wrapped as an OrtValue (no copies); the
bindings of a window length T are made once and reused (`_Plan`); another KV cache, or
grown buffers, only rebinds the past/present values. A call is then one
``run_with_iobinding``.
"""

from __future__ import annotations

from pathlib import Path
from time import perf_counter
from typing import Callable, Optional, Sequence

import numpy as np

from .. import naming
from ..manifest import LayerKind, Manifest
from ..naming import PieceKind
from .backbone import BackboneState, open_piece
from .experts import ExpertBackend, MoEExperts
from .rope import rope_tables
from .routing import group_by_expert
from .sampling import check_finite
from .fused_kv import FusedKV, first_capacity, kv_device, kv_dtype, ortvalue
from .sessions import CPU, Piece, bound_again, off_host
from . import widths

CACHED_PLANS = 16       # windows up to this length keep their bindings
WARM_PAST = 16          # positions before the window of a warm-up call (`FusedBackbone.warm`)


class SharedInputs:
    """The inputs every fused attention graph of a model shares: the cache length after the
    call (``seqlens_k`` = length - 1, ``total_sequence_length``) and the rotary tables.
    ``device`` "cuda" (the attention runs there, `fused_kv.kv_device`): the tables live on
    the GPU, placed once. In host memory a session off the host would copy them in at every
    call: 0.17 ms of a 0.37 ms layer call at Qwen3-30B-A3B's size on the H200, 1.5 ms with
    a table of 40960 positions (docs/benchmarks.md, section 8g)."""

    def __init__(self, rope_theta: float, head_dim: int, positions: int, device: Optional[str] = None):
        self._seqlens = np.zeros(1, np.int32)
        self._total = np.zeros((), np.int32)
        cos, sin = rope_tables(rope_theta, head_dim, positions)
        self.values = {naming.SEQLENS_K: ortvalue(self._seqlens), naming.TOTAL_LENGTH: ortvalue(self._total),
                       naming.COS_CACHE: ortvalue(cos, device), naming.SIN_CACHE: ortvalue(sin, device)}

    def set_length(self, length: int) -> None:
        """The cache holds ``length`` positions once the call is done."""
        self._seqlens[0] = length - 1
        self._total[()] = length




class _Plan:
    """The buffers and bindings of one window length: ``steps`` run in order. The KV cache
    is bound apart (`rebind`), so a plan outlives the cache it was made with."""

    def __init__(self, t: int, rows: int, cache: FusedKV):
        self.t = t
        self.cache = cache
        self.kv: list[tuple[object, int]] = []          # (binding, layer) of the layer graphs
        self.ids = np.zeros((1, t), np.int64)
        self.rows = np.zeros(rows, np.int64)
        self.result: Optional[np.ndarray] = None       # the logits of the last run
        self.values: list = []                         # what the bindings read and write
        self.steps: list[tuple[str, Callable[[], Optional[int]]]] = []   # -> ORT calls made (None: 1)

    def rebind(self, cache: FusedKV) -> None:
        for binding, layer in self.kv:
            cache.bind(binding, layer, naming.KV_NAMES)
        self.cache = cache

    def buffer(self, shape: tuple[int, ...], dtype=np.float32) -> tuple[np.ndarray, object]:
        arr = np.zeros(shape, dtype)
        value = ortvalue(arr)
        self.values.append(value)
        return arr, value


class FusedBackbone(BackboneState):
    def __init__(self, bundle: Path, manifest: Manifest, experts: ExpertBackend,
                 providers: Sequence[str] = (CPU,)):
        super().__init__(manifest, experts)
        piece = lambda rel, kind: open_piece(bundle, manifest, rel, kind, providers)   # noqa: E731
        self.embed = piece(naming.EMBED, PieceKind.EMBED)
        self.final = piece(naming.FINAL, PieceKind.FINAL)
        # greedy decoding on the host screens with an 8-bit head (export/fused_head.py); on a
        # device the full head is one call, faster than the screen (0.47 against 0.92 ms on
        # the H200, docs/benchmarks.md section 8h)
        screened = manifest.head_quant == "none" and not off_host(self.final.session)
        self.final_greedy = piece(naming.FINAL_GREEDY, PieceKind.FINAL_GREEDY) if screened else None
        self.replay = None          # a runtime.tape.Replay: routing and tokens from a recorded run
        self.layers: list[Piece] = []
        self.shared: dict[int, Piece] = {}
        self.dense: dict[int, Piece] = {}
        for layer, kind in enumerate(manifest.layer_kinds):
            moe = kind is LayerKind.MOE
            lk = PieceKind.LAYER if moe else PieceKind.DENSE_LAYER
            self.layers.append(piece(naming.layer_piece(lk, layer), lk))
            if moe and manifest.dims.shared_expert_intermediate:
                self.shared[layer] = piece(naming.layer_piece(PieceKind.SHARED_EXPERT, layer), PieceKind.SHARED_EXPERT)
            elif not moe:
                self.dense[layer] = piece(naming.layer_piece(PieceKind.DENSE_MLP, layer), PieceKind.DENSE_MLP)
        d = manifest.dims
        self._kv_device = kv_device(manifest, providers)
        self._shared_inputs = SharedInputs(manifest.rope_theta, d.head_dim, d.max_positions, self._kv_device)
        self._plans: dict[tuple[int, bool, bool], _Plan] = {}
        self._generation = -1
        self._kv_dtype = kv_dtype(self.layers[0].session, naming.PAST_KEY)

    def new_cache(self) -> FusedKV:
        d = self.m.dims
        return FusedKV(d.num_layers, d.cache_heads, d.cache_key_dim, d.cache_value_dim,
                       first_capacity(self._kv_device, d.max_positions), self._kv_device, self._kv_dtype)

    def warm(self, widths: Sequence[int]) -> None:
        """Run each layer graph once at every window width in ``widths``, on a scratch cache;
        nothing else runs (no experts, no observers, no timers). ONNX Runtime's CUDA
        attention takes 40-110 ms on a session's first call at a width it has not run
        (measured on the H200, docs/benchmarks.md section 8g); at load that is load time
        instead of a stall in the middle of decoding."""
        scratch = self.new_cache()
        for t in widths:
            scratch.reserve(WARM_PAST + t)
            plan = self._build(t, True, False, scratch)
            self._shared_inputs.set_length(WARM_PAST + t)
            for name, step in plan.steps:
                if name == "attention":
                    step()

    # ---- one pass ------------------------------------------------------------------------
    def forward(self, ids: Sequence[int], cache: FusedKV, last_only: bool = True) -> np.ndarray:
        """Run T new tokens; returns logits [T, V] (or [1, V] with ``last_only``). With the
        attention on a device, a feed of last logits only runs as `widths.pieces`."""
        if not last_only:
            return self._forward(ids, cache, False)
        done = 0
        for n in widths.feed(len(ids), self._kv_device):
            logits = self._forward(ids[done:done + n], cache, True)
            done += n
        return logits

    def _forward(self, ids: Sequence[int], cache: FusedKV, last_only: bool) -> np.ndarray:
        t = len(ids)
        start = self._start = cache.length
        cache.reserve(start + t)
        plan = self._plan(t, last_only, cache)
        plan.ids[0] = ids
        self._shared_inputs.set_length(start + t)
        add = self.timers.add
        t0 = perf_counter()
        for name, step in plan.steps:
            calls = step()
            t1 = perf_counter()
            add(name, t1 - t0, 1 if calls is None else calls)
            t0 = t1
        cache.length = start + t
        logits = plan.result[0].copy()
        check_finite(logits, "target model", start + t)
        if self.replay is not None:
            self.replay.target(logits, start, t, last_only)
        return logits

    def _plan(self, t: int, last_only: bool, cache: FusedKV) -> _Plan:
        if cache.generation != self._generation:           # another cache, or its buffers moved
            for plan in self._plans.values():
                plan.rebind(cache)
            self._generation = cache.generation
        key = (t, last_only, self.greedy and self.final_greedy is not None)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._build(t, last_only, key[2], cache)
            if t <= CACHED_PLANS:
                self._plans[key] = plan
        return plan

    # ---- bindings --------------------------------------------------------------------------
    def _build(self, t: int, last_only: bool, screened: bool, cache: FusedKV) -> _Plan:
        d = self.m.dims
        plan = _Plan(t, 1 if last_only else t, cache)
        plan.rows[:] = [t - 1] if last_only else np.arange(t)
        h = (1, t, d.hidden_size)
        hidden, hidden_v = plan.buffer(h)
        self._bind(plan, "embed", self.embed, {naming.INPUT_IDS: ortvalue(plan.ids)}, {naming.HIDDEN: hidden_v})
        ffn, ffn_v = plan.buffer(h)                                  # zeros: no FFN before layer 0
        for layer, kind in enumerate(self.m.layer_kinds):
            hidden, hidden_v, ffn, ffn_v = self._bind_layer(plan, layer, kind, hidden_v, ffn_v)
        inputs = {naming.HIDDEN: hidden_v, naming.FFN_IN: ffn_v, naming.LOGIT_ROWS: ortvalue(plan.rows)}
        logits, logits_v = plan.buffer((1, plan.rows.size, d.vocab_size))
        plan.result = logits
        full = self._bind(plan, "head", self.final, inputs, {naming.LOGITS: logits_v}, step=not screened)
        if screened:
            self._bind_screen(plan, inputs, full)
        return plan

    def _bind_screen(self, plan: _Plan, inputs: dict, full: Callable[[], None]) -> None:
        """Greedy decoding over an fp32 head: the 8-bit screen, exact logits for its K best
        candidates written over the screened ones; the fp32 head where the screen cannot
        settle the argmax (see export/fused_head.py)."""
        out = self.final_greedy.session.get_outputs()
        k = out[1].shape[-1]
        rows = (1, plan.rows.size)
        screen, screen_v = plan.buffer((*rows, self.m.dims.vocab_size))
        upper, upper_v = plan.buffer((*rows, k))
        ids, ids_v = plan.buffer((*rows, k), np.int64)
        exact, exact_v = plan.buffer((*rows, k))
        run = self._bind(plan, "head", self.final_greedy, inputs,
                         {naming.LOGITS: screen_v, naming.CAND_UPPER: upper_v, naming.CAND_IDS: ids_v,
                          naming.CAND_LOGITS: exact_v}, step=False)
        full_logits = plan.result

        def head() -> int:
            run()
            if (upper[..., -1] < exact.max(axis=-1)).all():
                for r in range(screen.shape[1]):
                    screen[0, r, ids[0, r]] = exact[0, r]
                plan.result = screen
                return 1
            full()
            plan.result = full_logits
            return 2

        plan.steps.append(("head", head))

    def _bind(self, plan: _Plan, name: str, piece, inputs: dict, outputs: dict,
              step: bool = True, kv_layer: Optional[int] = None) -> Callable[[], None]:
        """Bind ``piece``'s inputs and outputs to these OrtValues (and the plan's KV cache
        of ``kv_layer``); returns the call, which is also appended to the plan's steps under
        ``name`` unless ``step`` is False."""
        session = piece.session
        b = session.io_binding()
        if kv_layer is not None:
            plan.kv.append((b, kv_layer))
            plan.cache.bind(b, kv_layer, naming.KV_NAMES)
        for n, v in inputs.items():
            b.bind_ortvalue_input(n, v)
        for n, v in outputs.items():
            b.bind_ortvalue_output(n, v)
        plan.values.extend(inputs.values())
        run, raw = session._sess.run_with_iobinding, b._iobinding
        call = lambda: run(raw, None)        # noqa: E731  (the binding's C++ call, without the wrapper)
        if off_host(session):         # a host cache is bound again (`bound_again`); one on the device is not
            kv = (lambda: plan.cache.bind(b, kv_layer, naming.KV_NAMES)) if kv_layer is not None \
                and self._kv_device is None else None
            call = bound_again(call, b, inputs, kv)
        plan.values.append(b)
        if step:
            plan.steps.append((name, call))
        return call

    def _bind_layer(self, plan: _Plan, layer: int, kind: LayerKind, hidden_v, ffn_v):
        d, t = self.m.dims, plan.t
        h = (1, t, d.hidden_size)
        out, out_v = plan.buffer(h)
        normed, normed_v = plan.buffer(h)
        inputs = {naming.HIDDEN: hidden_v, naming.FFN_IN: ffn_v, **self._shared_inputs.values}
        outputs = {naming.HIDDEN_OUT: out_v, naming.NORMED: normed_v}
        new_ffn, new_ffn_v = plan.buffer(h)
        if kind is LayerKind.DENSE:
            self._bind(plan, "attention", self.layers[layer], inputs, outputs, kv_layer=layer)
            self._bind(plan, "dense_mlp", self.dense[layer], {naming.NORMED: normed_v}, {naming.FFN_OUT: new_ffn_v})
            return out, out_v, new_ffn, new_ffn_v
        a, e = d.top_k, d.num_experts
        weights, weights_v = plan.buffer((1, t, a))
        ids, ids_v = plan.buffer((1, t, a), np.int64)
        logits, logits_v = plan.buffer((1, t, e))
        outputs.update({naming.TOPK_WEIGHTS: weights_v, naming.TOPK_IDS: ids_v, naming.ROUTER_LOGITS: logits_v})
        self._bind(plan, "attention", self.layers[layer], inputs, outputs, kv_layer=layer)
        plan.steps.append(("observers", lambda: self._observe(layer, ids, weights, logits)))
        routed, routed_v = (plan.buffer(h) if layer in self.shared else (new_ffn, new_ffn_v))
        if isinstance(self.experts, MoEExperts):
            gate_up, down = self.experts.layer_weights(layer)
            experts = self.experts
            call = self._bind(plan, "experts", experts,
                              {naming.NORMED: normed_v, naming.ROUTER_LOGITS: logits_v,
                               "w_gate_up": gate_up, "w_down": down}, {naming.FFN_OUT: routed_v}, step=False)
            plan.steps.append(("experts", lambda: (call(), experts.count(1))[1]))
        else:
            plan.steps.append(("experts", lambda: self._host_experts(layer, normed, ids, weights, routed)))
        if layer in self.shared:
            shared, shared_v = plan.buffer(h)
            self._bind(plan, "shared_expert", self.shared[layer], {naming.NORMED: normed_v}, {naming.FFN_OUT: shared_v})
            plan.steps.append(("add_shared", lambda: (np.add(routed, shared, out=new_ffn), 0)[1]))
        return out, out_v, new_ffn, new_ffn_v

    def _observe(self, layer: int, ids: np.ndarray, weights: np.ndarray, logits: np.ndarray) -> int:
        if self.replay is not None:
            self.replay.route(layer, self._start, ids[0], weights[0], logits[0])
        if self.observers:
            i, w = ids[0].copy(), weights[0].copy()          # observers may keep them
            for observe in self.observers:
                observe(layer, i, w)
        return 0

    def _host_experts(self, layer: int, normed: np.ndarray, ids: np.ndarray, weights: np.ndarray,
                      out: np.ndarray) -> int:
        """The expert backend on the host (tiers, grouped, sessions); returns its ORT calls."""
        i, w = ids[0], weights[0]
        groups = group_by_expert(i, w) if self.experts.needs_groups else []
        before = self.experts.calls()
        np.copyto(out, self.experts.run_layer(layer, normed, groups, ids=i, weights=w))
        return self.experts.calls() - before

