"""`spac-bench`'s grid and its summary: pure (no ORT, no clocks).

    cells = grid(["spac", "sd-static", "lru"], ["17%", "30%"], [4, "auto"])
    ... run every cell on every prompt: RunResult per (cell, prompt) ...
    rows = summarise(results)              # one row per cell and domain ("all" included)
    print(render(rows))

A cell is (policy, budget, K, slots' precision). Policies that decode plainly (cpu,
static, lru) run once per budget, whatever K; ``none`` (no tiers) and ``resident`` (every
expert fast) run once per K, whatever the budget; sd-static and spac skip K=0 (they need
a window); ``none`` and ``cpu`` (no expert in a slot) run once whatever the precision.
Speedups compare cells of the same budget, K and precision (a plain-decoding baseline
counts for every K, a budget-free one for every budget, a slot-free one for every
precision).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import ConfigError
from ..runtime.spac.policies import POLICIES

K = Union[int, str]
PLAIN = ("cpu", "static", "lru")            # decode without speculation: K does not apply
NO_BUDGET = ("none", "resident")            # no fast budget to vary
NO_SLOTS = ("none", "cpu")                  # no expert in a slot: no slot precision to vary
BASELINES = ("none", "cpu", "static", "lru", "sd-static", "resident")
ALL = "all"                                 # the domain of a row over every prompt


@dataclass(frozen=True)
class Cell:
    policy: str
    budget: Optional[str]       # None: the policy has no budget (none, resident)
    k: Optional[K]              # None: plain decoding (cpu, static, lru)
    fast_quant: Optional[str] = None    # the slots' precision where the grid varies it (None: the run's)

    @property
    def label(self) -> str:
        quant = f" {self.fast_quant}" if self.fast_quant else ""
        return f"{self.policy} {self.budget or '-'}{quant} K={'-' if self.k is None else self.k}"


def row_cell(row: dict) -> Cell:
    """The cell a summary row (`summarise`) reports."""
    return Cell(row["policy"], row["budget"], row["k"], row.get("fast_quant"))


@dataclass(frozen=True)
class Prompt:
    text: Optional[str]
    ids: Optional[tuple[int, ...]]
    domain: str
    max_new_tokens: int


@dataclass
class RunResult:
    """One prompt through one cell."""

    cell: Cell
    domain: str
    new_tokens: int
    decode_s: float
    accepted_per_window: float
    hit_rate: Optional[float] = None
    fast_share: Optional[float] = None
    bytes_to_fast: float = 0.0
    layer_s: dict = field(default_factory=dict)        # layer -> seconds in the expert backend
    reproduced: Optional[bool] = None                  # replay: the tape's tokens came out


def grid(policies: Sequence[str], budgets: Sequence[str], ks: Sequence[K],
         fast_quants: Sequence[Optional[str]] = (None,)) -> list[Cell]:
    """The cells to run, in a stable order (policy, budget, precision, K), without repeats."""
    unknown = [p for p in policies if p != "none" and p not in POLICIES]
    if unknown:
        raise ConfigError(f"unknown policy '{unknown[0]}'; choose from none, {', '.join(POLICIES)}")
    if not policies or not budgets or not ks or not fast_quants:
        raise ConfigError("spac-bench needs at least one policy, one budget, one K and one precision")
    cells: list[Cell] = []
    for p in policies:
        for b in ([None] if p in NO_BUDGET else budgets):
            for q in ([None] if p in NO_SLOTS else fast_quants):
                for k in ([None] if p in PLAIN else ks):
                    if k == 0 and p in POLICIES and POLICIES[p].speculative is True:
                        continue                    # its sensor is the verify window: never plain
                    cell = Cell(p, b, k, q)
                    if cell not in cells:
                        cells.append(cell)
    return cells


def _row(cell: Cell, domain: str, runs: list[RunResult]) -> dict:
    tokens = sum(r.new_tokens - 1 for r in runs)
    seconds = sum(r.decode_s for r in runs)
    made = sum(r.new_tokens for r in runs)

    def mean(name: str) -> Optional[float]:
        vals = [getattr(r, name) for r in runs if getattr(r, name) is not None]
        return sum(vals) / len(vals) if vals else None

    layers: dict[str, float] = {}
    for r in runs:
        for layer, s in r.layer_s.items():
            layers[str(layer)] = layers.get(str(layer), 0.0) + s
    reproduced = [r.reproduced for r in runs if r.reproduced is not None]
    return {"policy": cell.policy, "budget": cell.budget, "k": cell.k, "fast_quant": cell.fast_quant,
            "domain": domain, "prompts": len(runs),
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
            "accepted_per_window": mean("accepted_per_window"), "hit_rate": mean("hit_rate"),
            "fast_share": mean("fast_share"),
            "bytes_to_fast_per_token": sum(r.bytes_to_fast for r in runs) / made if made else 0.0,
            "layer_ms_per_token": {k: 1e3 * v / made for k, v in sorted(layers.items(), key=lambda kv: int(kv[0]))}
            if made else {},
            "reproduced": f"{sum(reproduced)}/{len(reproduced)}" if reproduced else None}


def summarise(results: Sequence[RunResult]) -> list[dict]:
    """Rows per cell and domain (plus ``all``), each with its speedup over every baseline
    measured at the same budget and K."""
    cells: list[Cell] = []
    for r in results:
        if r.cell not in cells:
            cells.append(r.cell)
    domains = sorted({r.domain for r in results})
    rows = []
    for cell in cells:
        mine = [r for r in results if r.cell == cell]
        for domain in [ALL, *domains]:
            runs = mine if domain == ALL else [r for r in mine if r.domain == domain]
            if runs:
                rows.append(_row(cell, domain, runs))
    for row in rows:
        row["speedup"] = {b: row["tokens_per_s"] / other["tokens_per_s"]
                          for b in BASELINES if b != row["policy"]
                          for other in [_match(rows, b, row)] if other and other["tokens_per_s"] > 0}
    return rows


def _match(rows: list[dict], policy: str, like: dict) -> Optional[dict]:
    """The baseline's row comparable with ``like``: same domain, and the same budget, K and
    precision where the baseline has them."""
    for r in rows:
        if r["policy"] == policy and r["domain"] == like["domain"] and all(
                r.get(f) is None or like.get(f) is None or r[f] == like[f] for f in ("budget", "k", "fast_quant")):
            return r
    return None


def _fmt(v, pct: bool = False) -> str:  # type: ignore[no-untyped-def]
    if v is None:
        return "-"
    if pct:
        return f"{v:.1%}"
    if isinstance(v, float):
        return f"{v:.0f}" if v >= 100 else f"{v:.3g}"
    return str(v)


def render(rows: Sequence[dict], domain: str = ALL) -> str:
    """A markdown table of the rows of one domain."""
    chosen = [r for r in rows if r["domain"] == domain]
    bases = [b for b in BASELINES if any(b in r["speedup"] for r in chosen)]
    quants = any(r.get("fast_quant") for r in chosen)        # a precision column only where the grid varies it
    headers = ["policy", "budget", *(["slots"] if quants else []), "K", "tok/s", *[f"x {b}" for b in bases],
               "accepted/window", "hit rate", "fast share", "MB to fast/token"]
    body = [[r["policy"], r["budget"] or "-", *([r.get("fast_quant") or "-"] if quants else []),
             "-" if r["k"] is None else str(r["k"]), _fmt(r["tokens_per_s"]),
             *[_fmt(r["speedup"].get(b)) for b in bases], _fmt(r["accepted_per_window"]),
             _fmt(r["hit_rate"], True), _fmt(r["fast_share"], True), _fmt(r["bytes_to_fast_per_token"] / 1e6)]
            for r in chosen]
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line, sep, *("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
                                   for row in body)])


def load_prompts(path: Path, per_domain: Optional[int], max_new_tokens: int) -> list[Prompt]:
    """Prompts from a JSON-lines file: {"prompt": text, "domain": name} per line (the
    domain is optional); the first ``per_domain`` of each domain, or all."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read prompts file {path} ({type(exc).__name__}); pass a JSON-lines file "
                          "with one {\"prompt\": ...} object per line") from None
    out: list[Prompt] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            text, domain = item["prompt"], str(item.get("domain", "prompts"))
            if not isinstance(text, str) or not text:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"prompts file {path} line {n} is not a JSON object with a non-empty \"prompt\" "
                              "string") from None
        if per_domain is None or seen.get(domain, 0) < per_domain:
            seen[domain] = seen.get(domain, 0) + 1
            out.append(Prompt(text, None, domain, max_new_tokens))
    if not out:
        raise ConfigError(f"prompts file {path} has no prompts")
    return out


def to_json(rows: Sequence[dict], results: Sequence[RunResult], meta: dict) -> dict:
    return {**meta, "rows": list(rows),
            "runs": [{**asdict(r), "cell": asdict(r.cell)} for r in results]}
