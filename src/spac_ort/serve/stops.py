"""Stop sequences over streamed text. Pure.

Text that could still become a stop sequence is held back until the next piece decides:

    stops = StopMatcher(("\\n\\n", "END"))
    out, stopped = stops.push("foo\\n")     # -> ("foo", False): "\\n" may start "\\n\\n"
    out, stopped = stops.push("\\nbar")     # -> ("", True): the text ends before the stop
    rest = stops.flush()                   # held-back text at the end of generation
"""

from __future__ import annotations

from typing import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def push(self, piece: str) -> tuple[str, bool]:
        """Text now safe to emit, and whether a stop sequence was reached (generation ends;
        the stop sequence itself is not emitted)."""
        if self.stopped:
            return "", True
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held, self.stopped = "", True
            return text[:cut], True
        keep = self._partial(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """The held-back text: generation ended without completing a stop sequence."""
        text, self._held = self._held, ""
        return text

    def _partial(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
