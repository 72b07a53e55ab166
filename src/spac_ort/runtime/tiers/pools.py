"""Expert compute pools over one shared graph whose weights are graph inputs
(`graphs.swiglu_graph`).

- `SlotPool` (fast tier): N slots of device buffers (OrtValues on the fast provider's
  device); a fetch copies an expert's host arrays into a slot; a run binds that slot.
  On a machine without an accelerator it runs on a second CPU pool, which stands in for
  the fast device so the whole machinery runs; copies are then real host memcpys.
- `HostPool` (slow tier): the CPU provider binding the host arrays directly (zero copy).

Both tiers run the same graph, so an expert's output is the same wherever it runs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ... import naming
from ..graphs import swiglu_graph
from ..sessions import CPU, CUDA, ort, session_options
from .store import WEIGHTS


class HostPool:
    """Runs any expert from host arrays on the CPU."""

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


class SlotPool:
    """Fast-tier slots: per slot, one device buffer per weight."""

    def __init__(self, num_slots: int, hidden: int, inter: int, providers: Sequence[str] = (CPU,)):
        self.providers = list(providers)
        self.device = "cuda" if self.providers[0] == CUDA else "cpu"
        self.stand_in = self.device == "cpu"
        self.session = ort.InferenceSession(swiglu_graph(hidden, inter), session_options(), providers=self.providers)
        shapes = ((hidden, inter), (hidden, inter), (inter, hidden))
        self.buffers = [[ort.OrtValue.ortvalue_from_shape_and_type(list(sh), np.float32, self.device, 0)
                         for sh in shapes] for _ in range(num_slots)]

    def load(self, slot: int, weights: Sequence[np.ndarray]) -> None:
        """Copy an expert's host arrays into the slot's device buffers."""
        for buf, w in zip(self.buffers[slot], weights):
            buf.update_inplace(w)

    def run(self, slot: int, x: np.ndarray) -> np.ndarray:
        b = self.session.io_binding()
        b.bind_cpu_input(naming.NORMED, x)
        for name, buf in zip(WEIGHTS, self.buffers[slot]):
            b.bind_ortvalue_input(name, buf)
        b.bind_output(naming.FFN_OUT)
        self.session.run_with_iobinding(b)
        return b.copy_outputs_to_cpu()[0]
