"""A readable summary of a bundle (``spac-export inspect``)."""

from __future__ import annotations

from pathlib import Path

from .manifest import Manifest


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _routing(m: Manifest) -> str:
    r = m.routing
    parts = [r.scoring.value, r.topk_method.value]
    if r.topk_method.value != "greedy":
        parts.append(f"{r.topk_group} of {r.n_group} groups")
    if r.norm_topk_prob:
        parts.append("renormalised")
    if r.routed_scaling_factor != 1.0:
        parts.append(f"x {r.routed_scaling_factor:g}")
    return ", ".join(parts)


def _graphs(m: Manifest) -> str:
    if m.graphs.value == "portable":
        return "portable (standard ONNX operators)"
    head = ", 8-bit lm_head" if m.head_quant == "int8" else ""
    return f"fused (ONNX Runtime's attention, norm and MoE operators, KV cache in place{head})"


def _folder(path: str) -> str:
    return path.rsplit("/", 1)[0] + "/" if "/" in path else path


def summarize(bundle: Path, m: Manifest) -> str:
    d = m.dims
    moe = m.moe_layers()
    n_experts = len(moe) * d.num_experts
    expert_bytes = n_experts * m.experts.data_size
    draft_bytes = sum(f.size for n, f in m.files.items() if m.draft and n.startswith(_folder(m.draft.graph)))
    target_bytes = sum(f.size for n, f in m.files.items() if n.startswith("target/"))
    other = sum(f.size for f in m.files.values()) - draft_bytes - target_bytes
    lines = [
        f"bundle      {bundle}",
        f"model       {m.family.value} (from {m.source_model_type}), {m.dtype.value}, opset {m.opset}, {m.producer}",
        f"layers      {d.num_layers} ({len(moe)} MoE, {d.num_layers - len(moe)} dense)",
        f"graphs      {_graphs(m)}",
        f"attention   hidden {d.hidden_size}, {d.num_heads} query / {d.num_kv_heads} KV heads x {d.head_dim}, "
        f"cache {d.cache_heads} x ({d.cache_key_dim} + {d.cache_value_dim}) per position, max positions {d.max_positions}",
        f"experts     {d.num_experts} per layer, top-{d.top_k}, intermediate {d.expert_intermediate}, "
        f"routing {_routing(m)}",
    ]
    if d.shared_expert_intermediate:
        lines.append(f"shared      one gated shared expert per MoE layer, intermediate {d.shared_expert_intermediate}")
    lines += [
        f"expert size {_size(m.experts.data_size)} each ({m.experts.precision}), {n_experts} in all = {_size(expert_bytes)}",
        f"other files {_size(other)} (embed, {'layers, final' if m.graphs.value == 'fused' else 'attention, routers, head'}"
        ", tokenizer)",
        f"vocab       {d.vocab_size}, eos {list(m.eos_token_ids)}, tokenizer {m.tokenizer or 'none'}",
        (f"draft       {m.draft.graph} ({m.draft.model_type}, {m.draft.num_layers} layer{'s' if m.draft.num_layers != 1 else ''}, "
         f"{_size(draft_bytes)})" if m.draft else "draft       none"),
        f"expert path {m.experts.template}",
    ]
    if m.target is not None:
        lines.append(f"target      {m.target.name}: {_size(target_bytes)} under target/, providers "
                     f"{', '.join(m.target.providers)}, profile {m.target.profile}")
    return "\n".join(lines)
