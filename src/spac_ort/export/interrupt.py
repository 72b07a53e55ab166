"""Ctrl-C during export lands between pieces, never inside a library call.

Native code (safetensors, ONNX Runtime) may turn a KeyboardInterrupt raised inside it into
an unrelated error, which would then be reported as a corrupt checkpoint. While the
context is active the first SIGINT only sets a flag that `check` turns into a
KeyboardInterrupt at the next piece boundary; a second SIGINT interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Optional


class DeferredInterrupt:
    def __init__(self) -> None:
        self.pending = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def check(self) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
