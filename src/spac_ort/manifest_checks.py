"""Consistency rules of a manifest beyond its field types. Pure functions over parsed
values; each returns or raises through the caller's `Reader`, naming the field.

A bundle is input from a stranger: dimensions must be usable, routing parameters
sensible, and every path confined (`paths.path_problem`).
"""

from __future__ import annotations

import math
import re
import string
from typing import Any, Iterable, Optional

from . import naming
from .fields import Reader
from .paths import path_problem

_MAX_INT = 2 ** 31 - 1
_INT_SPEC = re.compile(r"0?[1-9]?d?")        # '', 'd', '03d', '3d', '03'


def check_dims(r: Reader, dims: Any) -> None:
    """Every dimension positive (the shared expert may be 0), top-k within the experts."""
    for name, value in vars(dims).items():
        low = 0 if name == "shared_expert_intermediate" else 1
        if not low <= value <= _MAX_INT:
            raise r.fail(name, f"is {value}, outside {low}..{_MAX_INT}")
    if dims.top_k > dims.num_experts:
        raise r.fail("top_k", f"is {dims.top_k}, more than the {dims.num_experts} experts")
    if dims.max_positions < 2:
        raise r.fail("max_positions", f"is {dims.max_positions}; a model needs at least 2 positions")


def check_routing(r: Reader, routing: Any) -> None:
    if routing.n_group < 1 or not 1 <= routing.topk_group <= routing.n_group:
        raise r.fail("topk_group", f"is {routing.topk_group} of n_group {routing.n_group}; "
                     "it must be between 1 and n_group")
    f = routing.routed_scaling_factor
    if not (math.isfinite(f) and f > 0):
        raise r.fail("routed_scaling_factor", f"is {f}; it must be a finite number > 0")


def check_path(r: Reader, key: str, rel: str) -> None:
    problem = path_problem(rel)
    if problem:
        raise r.fail(key, f"{problem}; bundle paths must stay inside the bundle")


def check_template(r: Reader, template: str, num_layers: int, num_experts: int) -> None:
    """Only ``{layer}`` and ``{expert}`` placeholders with integer formats, each once,
    and the paths it makes are confined."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as exc:
        raise r.fail("template", f"is not a valid path template ({exc})") from None
    names = sorted(name for name, _, _ in fields)
    if names != ["expert", "layer"]:
        raise r.fail("template", f"has placeholders {names}; it must contain {{layer}} and {{expert}} once each")
    for name, spec, conv in fields:
        if conv is not None or not _INT_SPEC.fullmatch(spec or ""):
            raise r.fail("template", f"formats {{{name}}} as '{spec}'; use an integer format such as {{{name}:03d}}")
    for layer, expert in ((0, 0), (num_layers - 1, num_experts - 1)):
        check_path(r, "template", template.format(layer=layer, expert=expert))


def check_listed(r: Reader, key: str, rel: Optional[str], files: dict) -> None:
    """``rel`` (named by field ``key``) must be one of the manifest's files, so that
    ``--verify`` covers it."""
    if rel is not None and rel not in files:
        raise r.fail(key, f"names {rel}, which is not listed in 'files'")


def sha_table(r: Reader, key: str) -> tuple[tuple[str, ...], ...]:
    rows = r.get(key, list)
    if not all(isinstance(row, list) and all(isinstance(s, str) for s in row) for row in rows):
        raise r.fail(key, "must be a list of lists of sha256 strings")
    return tuple(tuple(row) for row in rows)


def rope_theta(r: Reader) -> float:
    theta = float(r.get("rope_theta", (int, float)))
    if not (math.isfinite(theta) and theta > 1.0):
        raise r.fail("rope_theta", f"is {theta}; a rotary base is a finite number above 1")
    return theta


def head_quant(r: Reader) -> str:
    value = r.get("head_quant", str)
    if value not in ("none", "int8"):
        raise r.fail("head_quant", f"is '{value}', not one of none, int8")
    return value


def required_graphs(layer_kinds: Iterable[Any], shared_expert: bool,
                    graphs: naming.Graphs = naming.Graphs.PORTABLE, head_quant: str = "none") -> list[str]:
    """The non-expert graphs the runtime opens, by their fixed names."""
    kinds = naming.PieceKind
    fused = graphs is naming.Graphs.FUSED
    out = [naming.EMBED, naming.FINAL if fused else naming.HEAD]
    if fused and head_quant == "none":
        out.append(naming.FINAL_GREEDY)
    for layer, kind in enumerate(layer_kinds):
        moe = kind.value == "moe"
        if fused:
            out.append(naming.layer_piece(kinds.LAYER if moe else kinds.DENSE_LAYER, layer))
        else:
            out.append(naming.layer_piece(kinds.ATTENTION, layer))
        if moe:
            if not fused:
                out.append(naming.layer_piece(kinds.ROUTER, layer))
            if shared_expert:
                out.append(naming.layer_piece(naming.PieceKind.SHARED_EXPERT, layer))
        else:
            out.append(naming.layer_piece(naming.PieceKind.DENSE_MLP, layer))
    return out


EXPERT_BITS = {"fp32": None, "int8": 8, "int4": 4}     # how a bundle stores its experts


def expert_precision(er: Reader) -> str:
    """``experts.precision``: fp32 (the default; absent in older bundles), int8 or int4."""
    value = er.get("precision", str, optional=True) or "fp32"
    if value not in EXPERT_BITS:
        raise er.fail("precision", f"is '{value}'; experts are stored as {', '.join(EXPERT_BITS)}")
    return value


def expert_nbytes(hidden: int, inter: int, precision: str) -> int:
    """Bytes of one expert's weights as stored: fp32 gate, up and down, or the packed
    integers of gate/up [2I, H] and down [H, I] with one fp32 scale per row (`runtime.tiers.quant`)."""
    bits = EXPERT_BITS[precision]
    if bits is None:
        return 3 * hidden * inter * 4
    return (3 * hidden * inter * bits) // 8 + (2 * inter + hidden) * 4
