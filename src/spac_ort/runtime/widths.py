"""The token widths a device session runs at, and how a long feed is cut into them.

ONNX Runtime's CUDA kernels pay on a session's first call at each new width: the fused
attention 40-110 ms per layer graph, the MoE operator 25-100 ms per lane session
(docs/benchmarks.md, sections 8g and 8h). Decoding uses widths 1 to K + 1 (`DECODE`), which
loading runs once (the warm-up). A feed of another width, a prompt or a draft catching
up, runs on a device as pieces of warmed widths or powers of two from 16 (`pieces`): 198
tokens as 128 + 64 + 6. A process then pays at most one first call per power of two,
instead of one for every prompt length it meets.
"""

from __future__ import annotations

from typing import Optional

from .draft_control import DraftControlConfig

DECODE = range(1, DraftControlConfig.max_k + 2)     # windows of K drafts + 1, K up to auto's largest
_SMALLEST_POWER = 16


def pieces(n: int) -> list[int]:
    """``n`` tokens as widths in `DECODE` or powers of two from 16, largest first."""
    if n < 1:
        raise ValueError(f"a feed of {n} tokens")
    out = []
    power = 1 << (n.bit_length() - 1)
    while n >= _SMALLEST_POWER:
        while power > n:
            power >>= 1
        out.append(power)
        n -= power
    while n:
        step = min(n, DECODE[-1])
        out.append(step)
        n -= step
    return out


def feed(n: int, device: Optional[str]) -> list[int]:
    """The calls a feed of ``n`` tokens runs as: one on the host or within a window's width,
    else (``device`` set) `pieces`."""
    return pieces(n) if device is not None and n > DECODE[-1] else [n]
