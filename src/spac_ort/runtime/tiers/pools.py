"""Expert compute pools: where a tier's expert weights live and how a lane runs them.

- `ExpertStack`: n experts' weights stacked the way ``com.microsoft.MoE`` takes them
  (gate/up [n, 2I, H] interleaved, down [n, H, I]) on one device; `run` computes any
  subset of them for T tokens in ONE MoE call: the router's weights go in as logits of
  log(weight) at the stack indices of the chosen experts (fillers far below elsewhere), the op's
  softmax gives weight / lane sum, and the output is scaled back by the lane sum. A lane
  costs one call per layer, however many experts it runs.
- `SlotPool` (fast tier): an `ExpertStack` of N slots on the fast provider's device; a
  fetch writes an expert into a slot. On a machine without an accelerator it is host
  memory run by the CPU provider: it stands in for the fast device, copies are memcpys.
- `HostStacks` (slow tier, every expert in RAM): one `ExpertStack` per MoE layer in host
  memory, filled from the bundle's files the first time an expert is needed.
- `HostPool` (slow tier under a RAM budget): one expert per call, from the store's LRU.

Unused stack entries are zeros: the MoE op always runs k experts per token, and a token
with fewer chosen experts in a lane runs zero-weight fillers, which must be finite.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from ... import naming
from ..graphs import moe_graph, swiglu_graph
from ..sessions import CPU, CUDA, ort, session_options
from .pinned import PinnedCopier
from .store import WEIGHTS

# Logit of entry j when the lane does not run it: -1e4 - j. Its softmax weight is exactly 0
# in fp32 beside any chosen logit (log(weight) >= -69), and the values are distinct, so the
# operator's top-k never meets a tie among the fillers it must pick.
_FILLER_BASE = -1e4


def interleaved(w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An expert's weights as com.microsoft.MoE takes them: gate/up [2I, H] with row 2i the
    gate's column i and row 2i+1 the up projection's, down [H, I]."""
    inter, hidden = w_gate.shape[1], w_gate.shape[0]
    gate_up = np.empty((2 * inter, hidden), dtype=np.float32)
    gate_up[0::2], gate_up[1::2] = w_gate.T, w_up.T
    return gate_up, np.ascontiguousarray(w_down.T)


class ExpertStack:
    """n experts' weights on one device, run as one MoE call per lane (see the module doc)."""

    def __init__(self, n: int, hidden: int, inter: int, top_k: int, providers: Sequence[str] = (CPU,),
                 sessions: Optional[dict] = None, copier: Optional[PinnedCopier] = None):
        self.n, self.hidden, self.inter = n, hidden, inter
        self.top_k = min(top_k, n)
        self.providers = list(providers)
        self.device = "cuda" if self.providers[0] == CUDA else "cpu"
        shapes = ((n, 2 * inter, hidden), (n, hidden, inter))
        self.copier = copier
        if self.device == "cpu":                   # OrtValues over host memory: a write is a slice copy
            self.host = tuple(np.zeros(sh, np.float32) if copier is None else copier.pinned(sh) for sh in shapes)
            self.values = tuple(ort.OrtValue.ortvalue_from_numpy(a) for a in self.host)
            self._copy = None
        else:
            self.host = None
            self.values = tuple(ort.OrtValue.ortvalue_from_shape_and_type(list(sh), np.float32, self.device, 0)
                                for sh in shapes)
            self._copy = _DeviceCopy(self.values, self.providers, copier)
            zero = tuple(np.zeros(sh[1:], np.float32) for sh in shapes)
            for i in range(n):
                self._copy.write(i, zero)
        # one session per k (experts a token runs in this call), made on first use with the
        # options of the thread that built the stack (a lane may run on a worker thread);
        # stacks of the same shape may share them
        self._sessions: dict[int, ort.InferenceSession] = {} if sessions is None else sessions
        self._options = session_options()
        self._fillers = (_FILLER_BASE - np.arange(n, dtype=np.float32))[None, None, :]

    def write(self, i: int, gate_up: np.ndarray, down: np.ndarray) -> None:
        """Copy one expert's interleaved weights into entry ``i``."""
        if self._copy is None:
            self.host[0][i], self.host[1][i] = gate_up, down
        else:
            self._copy.write(i, (gate_up, down))

    def weights(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Entry ``i`` as host arrays (a copy from the device)."""
        if self.host is not None:
            return self.host[0][i].copy(), self.host[1][i].copy()
        return tuple(v.numpy()[i] for v in self.values)

    def _session(self, k: int) -> ort.InferenceSession:
        s = self._sessions.get(k)
        if s is None:
            graph = moe_graph(self.hidden, self.inter, self.n, k, True)
            s = self._sessions[k] = ort.InferenceSession(graph, self._options, providers=self.providers)
        return s

    def run(self, x: np.ndarray, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """x [1, T, H]; index [T, A] stack entries (-1: not in this lane); weights [T, A].
        Returns sum over the lane's entries of weight * expert(x), [1, T, H].

        On CUDA (onnxruntime-gpu 1.30, fp32) the operator's output is wrong for some rows
        when T > 1 (relative error 0.2-0.4 against the CPU, with or without fillers;
        benchmarks/cuda_stack_check.py), and right at T = 1: there each row is its own call."""
        t = x.shape[1]
        if t > 1 and self.device == "cuda":
            return np.concatenate([self.run(x[:, r:r + 1], index[r:r + 1], weights[r:r + 1]) for r in range(t)],
                                  axis=1)
        chosen = index >= 0
        k = max(1, int(chosen.sum(axis=1).max()))
        logits = np.repeat(self._fillers, t, axis=1)                                 # [1, T, n]
        rows = np.nonzero(chosen)[0]
        logits[0, rows, index[chosen]] = np.log(np.maximum(weights[chosen], 1e-30))
        b = self._session(k).io_binding()
        b.bind_cpu_input(naming.NORMED, np.ascontiguousarray(x, dtype=np.float32))
        b.bind_cpu_input(naming.ROUTER_LOGITS, logits)
        for name, value in zip(("w_gate_up", "w_down"), self.values):
            b.bind_ortvalue_input(name, value)
        b.bind_output(naming.FFN_OUT)
        self._session(k).run_with_iobinding(b)
        lane_sum = np.where(chosen, weights, 0.0).sum(axis=1, dtype=np.float32)
        return b.copy_outputs_to_cpu()[0] * lane_sum[None, :, None]


class _DeviceCopy:
    """Host -> device writes into one entry of a stack's device buffers. With a
    `PinnedCopier`: one asynchronous copy per array on the copier's stream, waited for
    before the write returns. Without: a copy graph whose outputs are bound to the entry's
    address inside the stack (ORT copies the host array in, the graph writes it there)."""

    def __init__(self, values: tuple, providers: Sequence[str], copier: Optional[PinnedCopier] = None):
        from ..graphs import copy_graph
        self.values, self.copier = values, copier
        self.shapes = [v.shape()[1:] for v in values]
        self.strides = [4 * int(np.prod(sh)) for sh in self.shapes]
        self.session = ort.InferenceSession(copy_graph(len(values)), session_options(), providers=list(providers))

    def write(self, i: int, arrays: Sequence[np.ndarray]) -> None:
        if self.copier is not None:
            self.copier.copy([(v.data_ptr() + i * s, a) for v, s, a in zip(self.values, self.strides, arrays)])
            return
        b = self.session.io_binding()
        for j, (value, arr) in enumerate(zip(self.values, arrays)):
            b.bind_cpu_input(f"src{j}", np.ascontiguousarray(arr, dtype=np.float32).reshape(-1))
            b.bind_output(f"dst{j}", "cuda", 0, np.float32, [self.strides[j] // 4],
                          value.data_ptr() + i * self.strides[j])
        self.session.run_with_iobinding(b)


class SlotPool(ExpertStack):
    """Fast-tier slots: an `ExpertStack` of ``num_slots`` entries on the fast provider."""

    @property
    def stand_in(self) -> bool:
        return self.device == "cpu"

    def load(self, slot: int, weights: Sequence[np.ndarray]) -> None:
        """Copy an expert (interleaved: gate/up, down) into the slot."""
        self.write(slot, *weights)


class HostStacks:
    """Every expert of the bundle in host memory, one stack per MoE layer, filled when
    made through ``read(layer, expert) -> (w_gate, w_up, w_down)`` (as the all-resident
    backend does: filling on first use put a read and a transposing copy of 19 MB, tens
    of milliseconds, inside decoding steps)."""

    def __init__(self, layers: Sequence[int], num_experts: int, hidden: int, inter: int, top_k: int, read,
                 copier: Optional[PinnedCopier] = None):
        self._read = read
        sessions: dict = {}
        self.stacks = {layer: ExpertStack(num_experts, hidden, inter, top_k, sessions=sessions, copier=copier)
                       for layer in layers}
        self.filled = {layer: np.zeros(num_experts, dtype=bool) for layer in layers}
        for layer in layers:
            self.ensure(layer, range(num_experts))

    def ensure(self, layer: int, experts: Sequence[int]) -> None:
        filled = self.filled[layer]
        for e in experts:
            if not filled[e]:
                self.stacks[layer].write(e, *interleaved(*self._read(layer, e)))
                filled[e] = True

    def get(self, layer: int, expert: int) -> tuple[np.ndarray, np.ndarray]:
        """The expert's interleaved weights (views into the stack)."""
        self.ensure(layer, (expert,))
        host = self.stacks[layer].host
        return host[0][expert], host[1][expert]

    def run(self, layer: int, x: np.ndarray, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
        self.ensure(layer, np.unique(index[index >= 0]).tolist())
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
