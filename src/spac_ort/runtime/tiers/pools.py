"""Expert compute pools: where a tier's expert weights live and how a lane runs them.

- `ExpertStack`: n experts' weights stacked the way ``com.microsoft.MoE`` takes them
  (gate/up [n, 2I, H] interleaved, down [n, H, I]) on one device; `run` computes any
  subset of them for T tokens in ONE MoE call: the router's weights go in as logits of
  log(weight) at the stack indices of the chosen experts (fillers far below elsewhere), the op's
  softmax gives weight / lane sum, and the output is scaled back by the lane sum. A lane
  costs one call per layer, however many experts it runs.
- `SlotPool` (fast tier): an `ExpertStack` of N slots on the fast provider's device; a
  fetch writes an expert into a slot. Integer slots on CUDA run gathered: a call gathers
  the entries it uses, dequantized to fp16, and runs the fp16 MoE operator on them. On a
  machine without an accelerator it is host memory run by the CPU provider: it stands in
  for the fast device, copies are memcpys.
- `HostStacks` (slow tier, every expert in RAM): one `ExpertStack` per MoE layer in host
  memory, filled from the bundle's files when made.
- `HostPool` (slow tier under a RAM budget): one expert per call, from the store's LRU.

Unused stack entries are zeros: the MoE op always runs k experts per token, and a token
with fewer chosen experts in a lane runs zero-weight fillers, which must be finite.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
from ... import naming
from ...errors import ConfigError
from ..graphs import gathered_qmoe_graph, moe_graph, qmoe_graph, swiglu_graph
from ..sessions import CPU, CUDA, ort, session_options
from .pinned import PinnedCopier
from .quant import FP16, ExpertLayout, GatheredLayout
from .store import WEIGHTS

# Logit of entry j when the lane does not run it: -1e4 - j. Its softmax weight is exactly 0
# in fp32 beside any chosen logit (log(weight) >= -69), and the values are distinct, so the
# operator's top-k never meets a tie among the fillers it must pick. An fp16 lane casts the
# logits to fp16, where -1e4 - j are not distinct: its fillers are the fp16 values from -512
# down (bit patterns 0xE000 + j), as far from any chosen logit.
_FILLER_BASE = -1e4
_HALF_FILLER_BITS, _HALF_FILLERS = 0xE000, 0xFBFF - 0xE000 + 1
log = logging.getLogger(__name__)


def interleaved(w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An expert's weights as com.microsoft.MoE takes them: gate/up [2I, H] with row 2i the
    gate's column i and row 2i+1 the up projection's, down [H, I]."""
    inter, hidden = w_gate.shape[1], w_gate.shape[0]
    gate_up = np.empty((2 * inter, hidden), dtype=np.float32)
    gate_up[0::2], gate_up[1::2] = w_gate.T, w_up.T
    return gate_up, np.ascontiguousarray(w_down.T)


class ExpertStack:
    """n experts' weights on one device, run as one MoE call per lane (see the module doc).
    ``bits`` 8 or 4: the entries hold quantized weights (`quant.ExpertLayout`) and a lane
    runs on ``com.microsoft.QMoE``; ``quant.FP16``: fp16 weights on the MoE operator.
    ``gathered`` (integer stacks; default: on a device): a call runs `gathered_qmoe_graph`
    over the entries it uses instead of QMoE over all of them; entries are stored as
    `GatheredLayout` says (`write_raw` takes them as `ExpertLayout` gives them). A gathered
    call's fp16 copies live beside the stack: ``max_entries`` caps the entries one operator
    call gathers (more run as several calls, summed)."""

    def __init__(self, n: int, hidden: int, inter: int, providers: Sequence[str] = (CPU,),
                 sessions: Optional[dict] = None, copier: Optional[PinnedCopier] = None, bits: Optional[int] = None,
                 gathered: Optional[bool] = None, max_entries: Optional[int] = None):
        self.n, self.hidden, self.inter = n, hidden, inter
        self.max_entries = max_entries
        self.providers = list(providers)
        self.device = "cuda" if self.providers[0] == CUDA else "cpu"
        self.layout = ExpertLayout(hidden, inter, bits)
        self.gathered = self.layout.quantized and (self.device != "cpu" if gathered is None else gathered)
        self._stored = GatheredLayout(self.layout) if self.gathered else None
        shapes = [((n, *sh), dt) for sh, dt in (self._stored or self.layout).shapes]
        if self.device == "cpu":                   # OrtValues over host memory: a write is a slice copy
            self.host = tuple(np.zeros(sh, dt) if copier is None else copier.pinned(sh, dt) for sh, dt in shapes)
            self.values = tuple(ort.OrtValue.ortvalue_from_numpy(a) for a in self.host)
            self._copy = None
        else:
            self.host = None
            self.values = tuple(ort.OrtValue.ortvalue_from_shape_and_type(list(sh), dt, self.device, 0)
                                for sh, dt in shapes)
            self._copy = _DeviceCopy(self.values, [dt for _, dt in shapes], self.providers, copier)
            zero = tuple(np.zeros(sh[1:], dt) for sh, dt in shapes)
            for i in range(n):
                self._copy.write(i, zero)
        # one session per k (experts a token runs in this call), made on first use with the
        # options of the thread that built the stack (a lane may run on a worker thread);
        # stacks of the same shape may share them
        self._sessions: dict[int, ort.InferenceSession] = {} if sessions is None else sessions
        self._options = session_options()
        self._fillers = fillers(n, half=bits == FP16)
        self._entry_fillers: dict[int, np.ndarray] = {}
        # On a device one session (k = A): each session pays 25-100 ms on its first call at
        # each new width (section 8h), and a filler costs a few microseconds there; on the
        # CPU every filler is an expert computed, so k follows the lane
        self.fixed_k = self.device != "cpu"

    def warm(self, widths: Sequence[int], top_k: int) -> None:
        """One call at every width over entries 0..top_k-1, output dropped (see `widths`); a
        gathered stack at every entry count a call of that width can gather, largest first
        (a new count's first call took up to 15 ms on an H200, docs/benchmarks.md section 8j)."""
        cap = self.n if self.max_entries is None else max(top_k, self.max_entries)
        for t in widths:
            most = min(t * top_k, self.n, cap) if self.gathered else min(top_k, self.n)
            for used in range(most, min(top_k, most) - 1, -1):
                if used <= top_k:                          # every token runs the same entries
                    index = np.tile(np.arange(used), (t, 1))
                else:                                      # entries 0..used-1 spread over the tokens
                    index = np.full((t, top_k), -1, np.int64)
                    index.flat[:used] = np.arange(used)
                self.run(np.zeros((1, t, self.hidden), np.float32), index,
                         np.full(index.shape, 1.0 / top_k, np.float32))

    def write(self, i: int, gate_up: np.ndarray, down: np.ndarray) -> None:
        """Encode one expert's interleaved fp32 weights at the stack's precision into entry ``i``."""
        self.write_raw(i, self.layout.encode(gate_up, down))

    def write_raw(self, i: int, arrays: Sequence[np.ndarray]) -> None:
        """Copy an entry's arrays, already at the stack's precision (e.g. another stack's), into entry ``i``."""
        if self._stored is not None:
            arrays = self._stored.convert(tuple(arrays))
        if self._copy is None:
            for dst, src in zip(self.host, arrays):
                dst[i] = src
        else:
            self._copy.write(i, arrays)

    def weights(self, i: int) -> tuple[np.ndarray, ...]:
        """Entry ``i`` as host arrays (a copy from the device), as the stack stores it."""
        if self.host is not None:
            return tuple(a[i].copy() for a in self.host)
        return tuple(v.numpy()[i] for v in self.values)

    def _session(self, k: int) -> ort.InferenceSession:
        s = self._sessions.get(k)
        if s is None:
            lay = self.layout
            graph = (gathered_qmoe_graph(self.hidden, self.inter, k, lay.bits, self._stored.blocks) if self._stored
                     else qmoe_graph(self.hidden, self.inter, self.n, k, lay.bits) if lay.quantized
                     else moe_graph(self.hidden, self.inter, self.n, k, True, half=lay.bits == FP16))
            s = self._sessions[k] = ort.InferenceSession(graph, self._options, providers=self.providers)
        return s

    def run(self, x: np.ndarray, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """x [1, T, H]; index [T, A] stack entries (-1: not in this lane); weights [T, A].
        Returns sum over the lane's entries of weight * expert(x), [1, T, H]. With
        ``fixed_k`` the call runs k = A whatever the lane holds."""
        k = min(index.shape[1], self.n) if self.fixed_k else max(1, int((index >= 0).sum(axis=1).max()))
        bound = dict(zip(self.layout.names, self.values))
        if not self.gathered:
            return run_lane(self._session(k), bound, x, index, weights, self._fillers)
        out = None
        for entries, local in gather_calls(index, k, self.max_entries):
            filler = self._entry_fillers.get(entries.size)
            if filler is None:
                filler = self._entry_fillers[entries.size] = fillers(entries.size, half=True)
            y = run_lane(self._session(k), bound, x, local, weights, filler, {naming.ENTRIES: entries})
            out = y if out is None else out + y
        return out


def fillers(n: int, half: bool = False) -> np.ndarray:
    """[1, 1, n] the logits of entries a lane does not run (see `_FILLER_BASE`); ``half``:
    values that stay distinct in fp16."""
    if not half:
        return (_FILLER_BASE - np.arange(n, dtype=np.float32))[None, None, :]
    if n > _HALF_FILLERS:
        raise ConfigError(f"an fp16 fast tier holds at most {_HALF_FILLERS} experts, not {n}; use a smaller "
                          "--fast-budget or --fast-quant fp32")
    bits = (_HALF_FILLER_BITS + np.arange(n)).astype(np.uint16)
    return bits.view(np.float16).astype(np.float32)[None, None, :]


def gather_calls(index: np.ndarray, k: int, cap: Optional[int] = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The operator calls a gathered lane makes: (entries [A] int64, index [T, A'] as
    positions in ``entries``, -1 where the pair is not in this call) per call. The distinct
    entries of ``index``, ascending, at most max(``cap``, ``k``) per call; entry 0 repeated
    up to ``k`` where fewer (the operator picks k). Not padded further: on an H200 a call
    over 19 entries took 0.85x one padded to 24 (docs/benchmarks.md section 8j)."""
    chosen = index >= 0
    used = np.unique(index[chosen])
    step = max(k, used.size if cap is None else cap, 1)
    calls = []
    for start in range(0, max(used.size, 1), step):
        part = used[start:start + step]
        entries = np.zeros(max(k, part.size), np.int64)
        entries[:part.size] = part
        local = np.full(index.shape, -1, np.int64)
        if part.size:
            pos = np.searchsorted(part, index)
            inside = chosen & (part[np.minimum(pos, part.size - 1)] == index)
            local[inside] = pos[inside]
        calls.append((entries, local))
    return calls


def run_lane(session, weights_in: dict, x: np.ndarray, index: np.ndarray, weights: np.ndarray,
             filler: np.ndarray, extra: Optional[dict] = None) -> np.ndarray:  # type: ignore[no-untyped-def]
    """One (Q)MoE call over a stack of experts bound as ``weights_in`` (input name ->
    OrtValue): x [1, T, H]; index [T, A] stack entries (-1: not in this lane); weights
    [T, A]; ``filler`` from `fillers`; ``extra``: more host inputs. The operator's k must
    be at least the most entries a row chooses. Returns sum over the chosen entries of
    weight * expert(x), [1, T, H]."""
    chosen = index >= 0
    logits = np.repeat(filler, x.shape[1], axis=1)                                  # [1, T, n]
    logits[0, np.nonzero(chosen)[0], index[chosen]] = np.log(np.maximum(weights[chosen], 1e-30))
    b = session.io_binding()
    b.bind_cpu_input(naming.NORMED, np.ascontiguousarray(x, dtype=np.float32))
    b.bind_cpu_input(naming.ROUTER_LOGITS, logits)
    for name, value in (extra or {}).items():
        b.bind_cpu_input(name, value)
    for name, value in weights_in.items():
        b.bind_ortvalue_input(name, value)
    b.bind_output(naming.FFN_OUT)
    session.run_with_iobinding(b)
    lane_sum = np.where(chosen, weights, 0.0).sum(axis=1, dtype=np.float32)
    return b.copy_outputs_to_cpu()[0] * lane_sum[None, :, None]


class _DeviceCopy:
    """Host -> device writes into one entry of a stack's device buffers. With a
    `PinnedCopier`: one asynchronous copy per array on the copier's stream, waited for
    before the write returns. Without: a copy graph whose outputs are bound to the entry's
    address inside the stack (ORT copies the host array in, the graph writes it there)."""

    def __init__(self, values: tuple, dtypes: Sequence[type], providers: Sequence[str],
                 copier: Optional[PinnedCopier] = None):
        from ..graphs import copy_graph
        self.values, self.copier = values, copier
        self.shapes = [v.shape()[1:] for v in values]
        self.dtypes = list(dtypes)
        self.strides = [np.dtype(dt).itemsize * int(np.prod(sh)) for dt, sh in zip(self.dtypes, self.shapes)]
        self.session = ort.InferenceSession(copy_graph(len(values)), session_options(), providers=list(providers))

    def write(self, i: int, arrays: Sequence[np.ndarray]) -> None:
        if self.copier is not None:
            self.copier.copy([(v.data_ptr() + i * s, a) for v, s, a in zip(self.values, self.strides, arrays)])
            return
        b = self.session.io_binding()
        for j, (value, arr) in enumerate(zip(self.values, arrays)):
            raw = np.ascontiguousarray(arr, dtype=self.dtypes[j]).reshape(-1).view(np.uint8)
            if raw.size % 4:
                raise ConfigError(f"an expert array of {raw.size} bytes cannot be copied as float words; install CuPy "
                                  "(the cuda extra) for byte copies")
            b.bind_cpu_input(f"src{j}", raw.view(np.float32))          # a byte copy, whatever the type
            b.bind_output(f"dst{j}", "cuda", 0, np.float32, [self.strides[j] // 4],
                          value.data_ptr() + i * self.strides[j])
        self.session.run_with_iobinding(b)


class SlotPool(ExpertStack):
    """Fast-tier slots: an `ExpertStack` of ``num_slots`` entries on the fast provider."""

    def __init__(self, n: int, hidden: int, inter: int, providers: Sequence[str] = (CPU,),
                 copier: Optional[PinnedCopier] = None, bits: Optional[int] = None):
        layout = ExpertLayout(hidden, inter, bits)
        device = providers[0].replace("ExecutionProvider", "")
        if providers[0] != CPU and layout.quantized and not GatheredLayout(layout).supported:
            # CUDA's QMoE reads CUTLASS's interleaved layout, not the CPU kernel's (its outputs
            # were wrong, docs/benchmarks.md section 8i): integer slots run gathered there
            raise ConfigError(f"int{bits} slots on {device} need hidden ({hidden}) and expert intermediate ({inter}) "
                              "sizes divisible by 16 (the gathered lane's blocks); use --fast-quant fp16")
        if providers[0] == CPU and bits == FP16:
            log.warning("fp16 slots on the CPU provider: its fp16 MoE kernel ran a real-size lane 10x slower than "
                        "fp32 (measured); --fast-quant fp16 is meant for an accelerator")
        # a gathered call's fp16 copies take at most the slots' own bytes
        cap = n * layout.nbytes // ExpertLayout(hidden, inter, FP16).nbytes if layout.quantized else None
        super().__init__(n, hidden, inter, providers, copier=copier, bits=bits, max_entries=cap)

    @property
    def stand_in(self) -> bool:
        return self.device == "cpu"

    def load(self, slot: int, arrays: Sequence[np.ndarray]) -> None:
        """Copy an expert, at the pool's precision (a host stack's entry, or `layout.encode`), into the slot."""
        self.write_raw(slot, arrays)


class HostStacks:
    """Every expert of the bundle in host memory at the tiers' precision, one stack per MoE
    layer, filled when made through ``entry(layer, expert)`` (its arrays at that precision; as
    the all-resident backend does: filling on first use put a read and a transposing copy
    of 19 MB, tens of milliseconds, inside decoding steps)."""

    def __init__(self, layers: Sequence[int], num_experts: int, hidden: int, inter: int, entry,
                 copier: Optional[PinnedCopier] = None, bits: Optional[int] = None):
        sessions: dict = {}
        self.stacks = {layer: ExpertStack(num_experts, hidden, inter, sessions=sessions, copier=copier, bits=bits)
                       for layer in layers}
        for layer, stack in self.stacks.items():
            for e in range(num_experts):
                stack.write_raw(e, entry(layer, e))

    def get(self, layer: int, expert: int) -> tuple[np.ndarray, ...]:
        """The expert's entry (views into the stack), ready for a slot of the same precision."""
        return tuple(a[expert] for a in self.stacks[layer].host)

    def run(self, layer: int, x: np.ndarray, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return self.stacks[layer].run(x, index, weights)


class HostPool:
    """Runs any expert from host arrays on the CPU, one call per expert."""

    def __init__(self, hidden: int, inter: int):
        self.session = ort.InferenceSession(swiglu_graph(hidden, inter), session_options(), providers=[CPU])

    def run(self, x: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
        b = self.session.io_binding()
        b.bind_cpu_input(naming.NORMED, x)
        for name, w in zip(WEIGHTS, weights):
            b.bind_cpu_input(name, w)
        b.bind_output(naming.FFN_OUT)
        self.session.run_with_iobinding(b)
        return b.copy_outputs_to_cpu()[0]


def lane_index(experts: np.ndarray, ids: np.ndarray, entries: Optional[np.ndarray] = None) -> np.ndarray:
    """[T, A] stack entries of the pairs (token, expert) whose expert is one of a lane's
    ``experts`` (entry ``entries[i]`` for ``experts[i]``; default: the expert id itself),
    -1 for the rest. ``ids``: the routing, [T, A], -1 where padded."""
    experts = np.asarray(experts, dtype=np.int64)
    size = int(max(ids.max(initial=-1), experts.max(initial=-1))) + 2
    lut = np.full(size, -1, dtype=np.int64)                 # lut[-1] stays -1: padded ids map to no entry
    lut[experts] = experts if entries is None else entries
    return lut[ids]
