"""Expert weights for ``com.microsoft.QMoE``: symmetric integer weights with one fp32 scale
per output row (8 bits: ``uint8 = q + 128``; 4 bits: two ``q + 8`` nibbles per byte, the
low nibble first), and the shapes a tier stores for an expert at each precision.

    layout = ExpertLayout(hidden, inter, bits=8)         # bits None: fp32, FP16: fp16 (the MoE operator)
    arrays = layout.encode(gate_up, down)                # what a stack entry holds
    layout.nbytes                                        # bytes per expert at this precision
    GatheredLayout(layout).convert(arrays)               # the same entry as a gathered stack stores it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...errors import ConfigError
from ...manifest_checks import EXPERT_BITS

QUANT = {name: bits for name, bits in EXPERT_BITS.items() if bits is not None}   # --expert-quant choices (besides none)
SAME = "same"            # --fast-quant's default: the fast tier holds experts at the CPU lane's precision
FP16 = 16                # --fast-quant fp16: half-precision floats on the MoE operator (a fast tier only)
_FLOATS = {"fp32": None, "fp16": FP16}      # --fast-quant's float precisions


def bits_of(name: Optional[str]) -> Optional[int]:
    if name is None or name == "none":
        return None
    if name not in QUANT:
        raise ConfigError(f"unknown expert quantization '{name}'; use none, int8 or int4")
    return QUANT[name]


def fast_bits(name: Optional[str]) -> "Optional[int] | str":
    """The fast tier's precision (``--fast-quant``): "same" (None: the CPU lane's), fp32, fp16, int8 or int4."""
    if name is None or name == SAME:
        return SAME
    if name in _FLOATS:
        return _FLOATS[name]
    if name not in QUANT:
        raise ConfigError(f"unknown fast-tier precision '{name}'; use same, fp32, fp16, int8 or int4")
    return QUANT[name]


def quantize(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """w [..., rows, cols] -> (packed uint8 [..., rows, cols * bits / 8], scales [..., rows])."""
    qmax = 2 ** (bits - 1) - 1
    scale = (np.abs(w).max(axis=-1) / qmax).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[..., None]
    q = np.clip(np.rint(w / safe), -qmax - 1, qmax).astype(np.int16)
    if bits == 8:
        return (q + 128).astype(np.uint8), scale
    u = (q + 8).astype(np.uint8)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8), scale


def dequantize(packed: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """The fp32 weights a packed array and its scales stand for."""
    if bits == 8:
        q = packed.astype(np.int16) - 128
    else:
        q = np.empty(packed.shape[:-1] + (2 * packed.shape[-1],), np.int16)
        q[..., 0::2], q[..., 1::2] = (packed & 0xF).astype(np.int16) - 8, (packed >> 4).astype(np.int16) - 8
    return (q * scale[..., None]).astype(np.float32)


@dataclass(frozen=True)
class ExpertLayout:
    """The arrays one expert occupies in a stack: fp32 or fp16 (gate/up [2I, H], down [H, I]) or
    quantized (the packed weights, each followed by its scales)."""

    hidden: int
    inter: int
    bits: Optional[int] = None

    def __post_init__(self) -> None:
        if self.bits == 4 and (self.hidden % 2 or self.inter % 2):
            raise ConfigError(f"int4 experts need even hidden ({self.hidden}) and intermediate ({self.inter}) sizes; "
                              "use --expert-quant int8")

    @property
    def quantized(self) -> bool:
        """Integer weights on QMoE (else floats on MoE)."""
        return self.bits not in (None, FP16)

    @property
    def precision(self) -> str:
        return "fp32" if self.bits is None else "fp16" if self.bits == FP16 else f"int{self.bits}"

    @property
    def shapes(self) -> tuple[tuple[tuple[int, ...], type], ...]:
        h, i = self.hidden, self.inter
        if not self.quantized:
            dt = np.float32 if self.bits is None else np.float16
            return (((2 * i, h), dt), ((h, i), dt))
        pack = 8 // self.bits
        return (((2 * i, h // pack), np.uint8), ((2 * i,), np.float32), ((h, i // pack), np.uint8), ((h,), np.float32))

    @property
    def names(self) -> tuple[str, ...]:
        return ("w_gate_up", "w_down") if not self.quantized else ("w_gate_up", "s_gate_up", "w_down", "s_down")

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(sh)) * np.dtype(dt).itemsize for sh, dt in self.shapes)

    def encode(self, gate_up: np.ndarray, down: np.ndarray) -> tuple[np.ndarray, ...]:
        if not self.quantized:
            dt = self.shapes[0][1]
            return gate_up.astype(dt, copy=False), down.astype(dt, copy=False)
        return (*quantize(gate_up, self.bits), *quantize(down, self.bits))


def pow2_block(cols: int) -> int:
    """The largest power of two that divides ``cols``."""
    return cols & -cols


@dataclass(frozen=True)
class GatheredLayout:
    """How a gathered stack (integer slots on CUDA, `graphs.gathered_qmoe_graph`) stores an
    entry: the packed weights as they are, each row's scale in fp16 and repeated once per
    block of the row (``com.microsoft.GatherBlockQuantized`` takes blocks that are powers of
    two of at least 16 elements). A row whose largest weight is under 127 * 2**-14 (about
    0.0078) gets a subnormal fp16 scale, with fewer significant bits."""

    base: ExpertLayout

    @property
    def blocks(self) -> tuple[int, int]:
        """Elements per scale in a gate/up row (hidden) and in a down row (intermediate)."""
        return pow2_block(self.base.hidden), pow2_block(self.base.inter)

    @property
    def supported(self) -> bool:
        return min(self.blocks) >= 16

    @property
    def shapes(self) -> tuple[tuple[tuple[int, ...], type], ...]:
        (gate_up, u8), _, (down, _), _ = self.base.shapes
        h, i = self.base.hidden, self.base.inter
        return ((gate_up, u8), ((2 * i, h // self.blocks[0]), np.float16), (down, u8),
                ((h, i // self.blocks[1]), np.float16))

    def convert(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """An entry in `ExpertLayout`'s arrays (weights, fp32 row scales, ...) as this layout stores it."""
        gate_up, s_gate_up, down, s_down = arrays
        per_row = (self.base.hidden // self.blocks[0], self.base.inter // self.blocks[1])
        return (gate_up, np.repeat(s_gate_up.astype(np.float16)[..., None], per_row[0], axis=-1),
                down, np.repeat(s_down.astype(np.float16)[..., None], per_row[1], axis=-1))
