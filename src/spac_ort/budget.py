"""Memory budgets: bytes with a unit ("2GiB", "512MB", "1000000B") or a share ("17%").

A bare number is refused: "17" could mean 17 bytes or 17%, and either reading is a
silent surprise.
"""

from __future__ import annotations

import re
from typing import Optional

from .errors import BudgetError

_UNITS = {"b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
          "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z%]*)\s*$")


def parse_budget(text: Optional[str], total: int, what: str = "budget") -> Optional[int]:
    """Bytes for ``text``; a percentage is of ``total`` bytes. None stays None."""
    if text is None:
        return None
    m = _RE.match(str(text))
    if not m:
        raise BudgetError(f"{what} '{text}' is not a size; write bytes ('2GiB', '512MB', '1000000') or a share ('17%')")
    value, unit = float(m[1]), m[2].lower()
    if not unit:
        raise BudgetError(f"{what} '{text}' has no unit; write bytes with a unit ('{m[1]}B', '2GiB') "
                          f"or a share of all experts ('{m[1]}%')")
    if unit == "%":
        if value > 100:
            raise BudgetError(f"{what} '{text}' is more than 100%; use a share between 0% and 100%")
        return int(total * value / 100)
    if unit not in _UNITS:
        raise BudgetError(f"{what} '{text}' has an unknown unit '{m[2]}'; use B, KB, MB, GB, KiB, MiB, GiB or %")
    return int(value * _UNITS[unit])
