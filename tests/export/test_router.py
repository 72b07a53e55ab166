"""The exported router against a direct, loop-based implementation of each routing rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spac_ort.export import onnx_io
from spac_ort.export.modules import Router
from spac_ort.export.pieces import DYNAMIC_AXES
from spac_ort.manifest import Routing, Scoring, TopkMethod
from spac_ort.naming import PieceKind
from spac_ort.runtime.sessions import Piece

E, H, A = 16, 12, 3


def direct(x: np.ndarray, w: np.ndarray, r: Routing, bias) -> list[tuple[set, dict]]:
    """Per token: the chosen expert set and their weights, written plainly."""
    out = []
    for row in x.astype(np.float64):
        logits = w @ row                                            # [E]
        if r.scoring is Scoring.SOFTMAX:
            scores = np.exp(logits - logits.max())
            scores /= scores.sum()
        else:
            scores = 1 / (1 + np.exp(-logits))
        choice = scores + (bias if bias is not None else 0.0)
        allowed = set(range(E))
        if r.topk_method is not TopkMethod.GREEDY:
            size = E // r.n_group
            group_score = []
            for g in range(r.n_group):
                members = sorted(choice[g * size:(g + 1) * size], reverse=True)
                group_score.append(members[0] + members[1] if r.topk_method is TopkMethod.NOAUX_TC else members[0])
            best = sorted(range(r.n_group), key=lambda g: -group_score[g])[: r.topk_group]
            allowed = {e for g in best for e in range(g * size, (g + 1) * size)}
        ranked = sorted(allowed, key=lambda e: -choice[e])[:A]
        weights = {e: scores[e] for e in ranked}
        if r.norm_topk_prob:
            total = sum(weights.values())
            weights = {e: v / total for e, v in weights.items()}
        out.append((set(ranked), {e: v * r.routed_scaling_factor for e, v in weights.items()}))
    return out


CASES = {
    "softmax-greedy": Routing(Scoring.SOFTMAX, False),
    "softmax-greedy-renorm": Routing(Scoring.SOFTMAX, True),
    "softmax-group-limited": Routing(Scoring.SOFTMAX, False, TopkMethod.GROUP_LIMITED_GREEDY, 4, 2, 1.5),
    "sigmoid-noaux-tc": Routing(Scoring.SIGMOID, True, TopkMethod.NOAUX_TC, 4, 2, 2.5),
    "sigmoid-noaux-tc-no-renorm": Routing(Scoring.SIGMOID, False, TopkMethod.NOAUX_TC, 8, 3, 1.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_router_matches_direct_rule(case, tmp_path):
    r = CASES[case]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(E, H, generator=g)
    bias = torch.randn(E, generator=g) * 0.3 if r.scoring is Scoring.SIGMOID else None
    module = Router(w, A, r, bias).eval()
    template = onnx_io.trace(module, (torch.randn(1, 3, H),), PieceKind.ROUTER, DYNAMIC_AXES[PieceKind.ROUTER])
    onnx_io.write(template, onnx_io.module_weights(module, template.weight_names), tmp_path / "router.onnx", "router")
    piece = Piece(tmp_path / "router.onnx")
    x = np.random.default_rng(1).standard_normal((1, 40, H)).astype(np.float32)
    weights, ids = piece(x)
    want = direct(x[0], w.numpy(), r, bias.numpy() if bias is not None else None)
    for t, (chosen, wt) in enumerate(want):
        assert set(ids[0, t].tolist()) == chosen, f"token {t}"
        got = dict(zip(ids[0, t].tolist(), weights[0, t].tolist()))
        for e in chosen:
            assert got[e] == pytest.approx(wt[e], rel=1e-5, abs=1e-6)
    if r.topk_method is not TopkMethod.GREEDY:   # each token's experts come from at most topk_group groups
        size = E // r.n_group
        assert all(len({int(e) // size for e in row}) <= r.topk_group for row in ids[0])
