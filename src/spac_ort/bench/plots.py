"""`spac-bench`'s plots (needs matplotlib, the ``[bench]`` extra): tokens/s against the
fast budget, against K, and per domain. Each returns the file it wrote, or None when the
grid has nothing to draw on that axis."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .grid import ALL, row_cell


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _axes(width: float = 7):  # type: ignore[no-untyped-def]
    return _pyplot().subplots(figsize=(width, 4.5))


def _save(fig, ax, out: Path, legend: int = 8, **labels) -> Path:  # type: ignore[no-untyped-def]
    """Label the axes (xlabel, ylabel, title), add the legend, write the PNG, free the figure."""
    ax.set(**labels)
    ax.legend(fontsize=legend)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


def _budget_value(b: str) -> float:
    """Order budgets: shares by their percentage, byte sizes after them by length of text."""
    text = b.strip().rstrip("%")
    try:
        return float(text)
    except ValueError:
        return float("inf")


def by_budget(rows: Sequence[dict], out: Path) -> Optional[Path]:
    rows = [r for r in rows if r["domain"] == ALL]
    budgets = sorted({r["budget"] for r in rows if r["budget"]}, key=_budget_value)
    if len(budgets) < 2:
        return None
    fig, ax = _axes()
    for key in sorted({(r["policy"], str(r["k"]), r.get("fast_quant") or "") for r in rows}):
        mine = [r for r in rows if (r["policy"], str(r["k"]), r.get("fast_quant") or "") == key]
        label = f"{key[0]}{' ' + key[2] if key[2] else ''} K={'-' if key[1] == 'None' else key[1]}"
        if mine[0]["budget"] is None:               # budget-free: a flat line
            ax.axhline(mine[0]["tokens_per_s"], linestyle="--", linewidth=1, label=label)
            continue
        pts = sorted(((budgets.index(r["budget"]), r["tokens_per_s"]) for r in mine))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xticks(range(len(budgets)), budgets)
    return _save(fig, ax, out, xlabel="fast budget", ylabel="decode tokens/s", title="tokens/s against the fast budget")


def by_k(rows: Sequence[dict], out: Path) -> Optional[Path]:
    rows = [r for r in rows if r["domain"] == ALL and r["k"] is not None]
    ks = list(dict.fromkeys(str(r["k"]) for r in rows))
    if len(ks) < 2:
        return None
    fig, ax = _axes()
    for key in sorted({(r["policy"], r["budget"] or "-", r.get("fast_quant") or "") for r in rows}):
        mine = {str(r["k"]): r["tokens_per_s"] for r in rows
                if (r["policy"], r["budget"] or "-", r.get("fast_quant") or "") == key}
        xs = [i for i, k in enumerate(ks) if k in mine]
        ax.plot(xs, [mine[ks[i]] for i in xs], marker="o", label=" ".join(part for part in key if part))
    ax.set_xticks(range(len(ks)), ks)
    return _save(fig, ax, out, xlabel="draft tokens K", ylabel="decode tokens/s", title="tokens/s against K")


def by_domain(rows: Sequence[dict], out: Path) -> Optional[Path]:
    domains = sorted({r["domain"] for r in rows if r["domain"] != ALL})
    if not domains:
        return None
    cells = list(dict.fromkeys(row_cell(r) for r in rows))
    fig, ax = _axes(max(7, 1.1 * len(domains) + 2))
    width = 0.8 / len(cells)
    for i, cell in enumerate(cells):
        rate = {r["domain"]: r["tokens_per_s"] for r in rows if row_cell(r) == cell}
        ax.bar([d + i * width for d in range(len(domains))], [rate.get(d, 0.0) for d in domains], width,
               label=cell.label)
    ax.set_xticks([d + 0.4 - width / 2 for d in range(len(domains))], domains, rotation=30, ha="right")
    return _save(fig, ax, out, legend=7, ylabel="decode tokens/s", title="tokens/s per domain")


def write_plots(rows: Sequence[dict], out_dir: Path) -> list[Path]:
    made = [by_budget(rows, out_dir / "tokens_per_s_vs_budget.png"), by_k(rows, out_dir / "tokens_per_s_vs_k.png"),
            by_domain(rows, out_dir / "tokens_per_s_per_domain.png")]
    return [p for p in made if p is not None]
