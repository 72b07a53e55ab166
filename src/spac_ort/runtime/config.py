"""Typed options of a `Generator`'s expert tiers (``Generator.from_bundle(tiers=...)``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ..errors import ConfigError
from ..profile import DeviceProfile
from .sessions import CPU
from .tiers.quant import bits_of, fast_bits
from .spac.policies import Policy, SpacOptions


@dataclass(frozen=True)
class TierConfig:
    """Experts placed by ``policy`` (a name from `spac.policies.POLICIES` or a `Policy`)
    over a fast tier of ``fast_budget`` ("2GiB", "17%" of all experts, or bytes as an
    int; default: every expert), the CPU, and the bundle's files under ``ram_budget``
    (default: unlimited). ``profile`` is the balancer's cost model (default: a CPU
    stand-in). ``overlap``: copies and the fast lane run beside the decode thread (True),
    or inline after each step and each layer (False); None chooses: overlap with an
    accelerator, inline with a CPU stand-in, where a second thread only contends for the
    same cores. ``expert_quant`` "int8" or "int4": both tiers hold experts quantized
    (symmetric, one scale per output row) and run them on ``com.microsoft.QMoE``; a slot
    then takes a quarter or an eighth of an fp32 expert's bytes. ``fast_quant`` sets the
    fast tier's apart: "fp32", "fp16", "int8" or "int4" (None: as ``expert_quant``), e.g.
    int4 in the CPU lane, where reading weights bounds the time, and fp16 in the slots of a
    GPU; at a precision other than the CPU lane's, fetches copy from a host mirror of every
    expert at the slots' precision (host memory: that much more). ``link_bytes_per_s``
    emulates a slower host-to-fast-tier link: a copy takes at least bytes / rate (e.g.
    25e9 for a PCIe 4.0 x16 class link on a faster one)."""

    policy: Union[str, Policy]
    fast_budget: Union[str, int, None] = None
    ram_budget: Union[str, int, None] = None
    fast_providers: tuple[str, ...] = (CPU,)
    profile: Optional[DeviceProfile] = None
    spac: SpacOptions = field(default_factory=SpacOptions)
    overlap: Optional[bool] = None
    link_bytes_per_s: Optional[float] = None
    expert_quant: Optional[str] = None
    fast_quant: Optional[str] = None

    def __post_init__(self) -> None:
        bits_of(self.expert_quant)                   # a ConfigError for an unknown name
        fast_bits(self.fast_quant)
        rate = self.link_bytes_per_s
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0
                                 or rate == float("inf")):
            raise ConfigError(f"link rate {rate!r} must be a positive number of bytes per second")
