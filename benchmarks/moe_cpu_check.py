import numpy as np, sys
from spac_ort.runtime.tiers.pools import ExpertStack, interleaved
h, i, n, k = 2048, 768, 43, 8
rng = np.random.default_rng(0)
experts = [tuple((rng.standard_normal(s) * 0.02).astype(np.float32) for s in ((h, i), (h, i), (i, h))) for _ in range(4)]
cpu = ExpertStack(n, h, i, k)
for e in range(n):
    cpu.write(e, *interleaved(*experts[e % 4]))
def sw(x, g, u, d):
    a = x @ g; return (a / (1 + np.exp(-a)) * (x @ u)) @ d
for t in (1, 2, 5):
    x = rng.standard_normal((1, t, h)).astype(np.float32)
    index = np.stack([rng.choice(n, k, replace=False) for _ in range(t)])
    w = rng.random((t, k)).astype(np.float32)
    got = cpu.run(x, index, w)
    want = np.zeros((t, h), np.float64)
    for r in range(t):
        for j in range(k):
            want[r] += w[r, j] * sw(x[0, r].astype(np.float64), *[a.astype(np.float64) for a in experts[index[r, j] % 4]])
    rows = [cpu.run(x[:, r:r+1], index[r:r+1], w[r:r+1])[0, 0] for r in range(t)]
    print(t, "batched", (np.abs(got[0] - want).max(axis=1) / np.abs(want).max()).round(6),
          "rowwise", [float(np.abs(rw - want[r]).max() / np.abs(want).max()) for r, rw in enumerate(rows)])
