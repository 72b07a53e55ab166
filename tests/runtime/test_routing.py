from __future__ import annotations

import numpy as np

from spac_ort.runtime.routing import expert_counts, group_by_expert


def test_group_by_expert_matches_direct_loop():
    rng = np.random.default_rng(0)
    for t in (1, 2, 5, 9, 64):
        ids = np.stack([rng.choice(16, 4, replace=False) for _ in range(t)])       # [T, A]
        w = rng.random((t, 4)).astype(np.float32)
        groups = group_by_expert(ids, w)
        assert [g.expert for g in groups] == sorted(set(ids.reshape(-1).tolist()))
        for g in groups:
            rows, cols = np.nonzero(ids == g.expert)
            assert g.rows.tolist() == rows.tolist()
            assert np.array_equal(g.weights, w[rows, cols])
        assert sum(g.rows.size for g in groups) == t * 4
        counts = expert_counts(ids, 16)
        assert counts.sum() == t * 4
        assert all(counts[g.expert] == g.rows.size for g in groups)
