"""Ctrl-C and SIGTERM during export land between pieces, never inside a library call.

Native code (safetensors, ONNX Runtime) may turn a KeyboardInterrupt raised inside it into
an unrelated error, which would then be reported as a corrupt checkpoint. While the
context is active the first SIGINT or SIGTERM only records the signal; `check` turns it
into `KeyboardInterrupt` (SIGINT) or `Terminated` (SIGTERM) at the next piece boundary,
so the caller's cleanup runs. A second signal interrupts at once. A signal that arrives
after the last boundary lets the export finish.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Optional

from ..errors import Terminated

__all__ = ["DeferredInterrupt", "Terminated"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


class DeferredInterrupt:
    def __init__(self) -> None:
        self.pending: Optional[int] = None    # the signal waiting for the next boundary
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.pending is not None:
            raise _exception(signum)
        self.pending = signum

    def check(self) -> None:
        """Raise the exception of a signal received since the last boundary."""
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise _exception(signum)

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
