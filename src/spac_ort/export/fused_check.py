"""Check a fused graph against the torch modules it replaces, on random inputs:

    layer        = Attention(hidden + ffn_in, past) then Router(normed)
    dense_layer  = Attention(hidden + ffn_in, past)
    final        = Head(hidden + ffn_in) at the rows asked for

The graph gets a KV buffer longer than the cache (as at run time) and must leave the
past untouched and the new keys and values after it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import naming
from ..manifest import ModelDims
from ..runtime.rope import rope_tables


INT8_RTOL = 5e-2     # an 8-bit head (weights and activations) against the fp32 one


def layer_case(d: ModelDims, theta: float, t: int, past: int, seed: int) -> tuple[dict, dict]:
    """(graph inputs, torch inputs) for a layer graph: ``past`` cached positions, ``t`` new."""
    g = torch.Generator().manual_seed(seed)
    cap = past + t + 2
    hidden, ffn = (torch.randn(1, t, d.hidden_size, generator=g) for _ in range(2))
    kv_shape = (1, d.num_kv_heads, cap, d.head_dim)
    pk, pv = torch.zeros(kv_shape), torch.zeros(kv_shape)
    pk[:, :, :past] = torch.randn(1, d.num_kv_heads, past, d.head_dim, generator=g)
    pv[:, :, :past] = torch.randn(1, d.num_kv_heads, past, d.head_dim, generator=g)
    cos, sin = rope_tables(theta, d.head_dim, cap)
    onnx_in = {naming.HIDDEN: hidden.numpy(), naming.FFN_IN: ffn.numpy(), naming.PAST_KEY: pk.numpy(),
               naming.PAST_VALUE: pv.numpy(), naming.SEQLENS_K: np.array([past + t - 1], np.int32),
               naming.TOTAL_LENGTH: np.array(past + t, np.int32), naming.COS_CACHE: cos, naming.SIN_CACHE: sin}
    torch_in = {"x": hidden + ffn, "positions": torch.arange(past, past + t).reshape(1, t),
                "past_key": pk[:, :, :past], "past_value": pv[:, :, :past], "length": past + t}
    return onnx_in, torch_in


def layer_reference(attention: torch.nn.Module, router: Optional[torch.nn.Module], case: dict) -> dict:
    """What a layer graph must output, by name (present key/value: the first positions)."""
    with torch.no_grad():
        out, normed, key, value = attention(case["x"], case["positions"], case["past_key"], case["past_value"])
        want = {naming.HIDDEN_OUT: out, naming.NORMED: normed, naming.PRESENT_KEY: key, naming.PRESENT_VALUE: value}
        if router is not None:
            weights, ids = router(normed)
            want.update({naming.TOPK_WEIGHTS: weights, naming.TOPK_IDS: ids,
                         naming.ROUTER_LOGITS: normed @ router.w_router})
    return {k: v.numpy() for k, v in want.items()}


def final_case(d: ModelDims, t: int, seed: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    hidden, ffn = (torch.randn(1, t, d.hidden_size, generator=g) for _ in range(2))
    rows = np.arange(1, t, 2, dtype=np.int64)
    return ({naming.HIDDEN: hidden.numpy(), naming.FFN_IN: ffn.numpy(), naming.LOGIT_ROWS: rows},
            {"x": (hidden + ffn)[:, torch.from_numpy(rows)]})


def final_reference(head: torch.nn.Module, case: dict) -> dict:
    with torch.no_grad():
        return {naming.LOGITS: head(case["x"]).numpy()}


def compare_greedy(got: dict, want: dict) -> tuple[float, Optional[str]]:
    """The screened head: its 8-bit logits near the exact ones, its candidates' logits
    exact, and wherever its rule says the argmax is among the candidates, it is."""
    exact = want[naming.LOGITS]                                                   # [1, N, V]
    scale = max(1.0, float(np.abs(exact).max()))
    if float(np.abs(got[naming.LOGITS] - exact).max()) / scale > INT8_RTOL:
        return float(np.abs(got[naming.LOGITS] - exact).max()) / scale, naming.LOGITS
    cand = got[naming.CAND_IDS]
    err = float(np.abs(np.take_along_axis(exact, cand, axis=-1) - got[naming.CAND_LOGITS]).max()) / scale
    settled = got[naming.CAND_UPPER][..., -1] < got[naming.CAND_LOGITS].max(axis=-1)        # [1, N]
    inside = (cand == exact.argmax(axis=-1)[..., None]).any(axis=-1)
    return err, (naming.CAND_IDS if (settled & ~inside).any() else None)


def compare(got: dict, want: dict) -> tuple[float, Optional[str]]:
    """(worst relative error, name of an integer output that differs or None)."""
    worst = 0.0
    for name, w in want.items():
        o = got[name]
        if name in (naming.PRESENT_KEY, naming.PRESENT_VALUE):
            o = o[:, :, :w.shape[2]]
        if w.dtype.kind in "iu":
            if not np.array_equal(w, o):
                return worst, name
            continue
        worst = max(worst, float(np.abs(w - o).max()) / max(1.0, float(np.abs(w).max())))
    return worst, None
