"""`DeviceProfile`: the cost model the balancer and the plan use.

Times are linear in tokens: ``time(n) = fixed + per_token * n`` for one expert serving n
tokens, on the fast and the slow tier (each tier runs its experts of a layer in one call:
this is the time an expert adds to that call), and a transfer costs ``latency + bytes /
bandwidth``. Profiles
are measured (``runtime.calibrate``) and saved as JSON; bundles for targets ship one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    fast_fixed_s: float          # per expert in a fast-tier call
    fast_per_token_s: float
    slow_fixed_s: float          # per expert in a slow-tier (CPU) call
    slow_per_token_s: float
    link_latency_s: float        # per transfer
    link_bytes_per_s: float

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "name":
                if not isinstance(value, str):
                    raise ConfigError(f"device profile field 'name' is {value!r}, not a string")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"device profile field '{f.name}' is {value!r}; it must be a finite number >= 0 "
                                  "(seconds, or bytes per second)")
        if self.link_bytes_per_s <= 0:
            raise ConfigError(f"device profile field 'link_bytes_per_s' is {self.link_bytes_per_s}; a copy bandwidth "
                              "must be > 0")

    def fast(self, tokens):
        return self.fast_fixed_s + self.fast_per_token_s * tokens

    def slow(self, tokens):
        return self.slow_fixed_s + self.slow_per_token_s * tokens

    def transfer(self, nbytes: int) -> float:
        return self.link_latency_s + nbytes / self.link_bytes_per_s

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "DeviceProfile":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            return cls(**data)
        except (OSError, ValueError, TypeError, RecursionError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
            raise ConfigError(f"cannot read device profile {path} ({reason}); write one with "
                              "spac-run BUNDLE --calibrate PROFILE.json") from None
