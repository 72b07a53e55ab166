"""One MoE call runs any subset of a stack's experts: the lane's share of the layer output."""

from __future__ import annotations

import numpy as np
import pytest

from spac_ort.runtime.tiers.pools import ExpertStack, interleaved, lane_index
from spac_ort.runtime.tiers.quant import FP16


def _swiglu(x, w_gate, w_up, w_down):
    g = x @ w_gate
    return (g / (1 + np.exp(-g)) * (x @ w_up)) @ w_down


def test_a_lane_call_equals_its_experts_weighted_sum():
    rng = np.random.default_rng(0)
    h, i, n, top_k, t = 16, 8, 6, 3, 4
    experts = [tuple((rng.standard_normal(s) * 0.3).astype(np.float32) for s in ((h, i), (h, i), (i, h)))
               for _ in range(n)]
    stack = ExpertStack(n, h, i)
    for e, w in enumerate(experts):
        stack.write(e, *interleaved(*w))
    x = rng.standard_normal((1, t, h)).astype(np.float32)
    ids = np.array([[0, 1, 2], [3, 4, 5], [1, 3, 5], [0, 2, 4]])
    weights = rng.random((t, top_k)).astype(np.float32)
    lane = np.array([1, 3, 4])                       # row 0 has one, row 3 one, row 1 two, row 2 two
    got = stack.run(x, lane_index(lane, ids), weights)
    want = np.zeros((t, h), np.float32)
    for r in range(t):
        for j in range(top_k):
            if ids[r, j] in lane:
                want[r] += weights[r, j] * _swiglu(x[0, r], *experts[ids[r, j]])
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    # a lane with none of a token's experts gives that token zeros, not filler output
    none = stack.run(x[:, :1], lane_index(np.array([5]), ids[:1]), weights[:1])
    assert np.array_equal(none, np.zeros_like(x[:, :1]))


@pytest.mark.parametrize("bits", [None, FP16])
def test_a_fixed_k_lane_gives_the_same_output_and_warms_one_session_per_width(monkeypatch, bits):
    """A device stack runs every lane at k = top-k (one session): the fillers it then
    computes weigh exactly 0, in fp32 and fp16 stacks. `warm` calls that session once at
    each width."""
    import spac_ort.runtime.tiers.pools as pools

    rng = np.random.default_rng(1)
    h, i, n, top_k, t = 16, 8, 6, 3, 4
    stack = ExpertStack(n, h, i, bits=bits)
    for e in range(n):
        stack.write(e, *interleaved(*((rng.standard_normal(s) * 0.3).astype(np.float32)
                                      for s in ((h, i), (h, i), (i, h)))))
    x = rng.standard_normal((1, t, h)).astype(np.float32)
    ids = np.array([[0, 1, 2], [3, 4, 5], [1, 3, 5], [0, 2, 4]])
    weights = rng.random((t, top_k)).astype(np.float32)
    index = lane_index(np.array([1, 3, 4]), ids)
    assert not stack.fixed_k                                  # on the CPU k follows the lane
    varying = stack.run(x, index, weights)
    assert set(stack._sessions) == {2}
    stack.fixed_k = True
    np.testing.assert_array_equal(stack.run(x, index, weights), varying)
    calls = []
    run = pools.run_lane
    monkeypatch.setattr(pools, "run_lane", lambda session, *a: (calls.append((session, a[1].shape[1])), run(session, *a))[1])
    stack.warm(range(1, 5), top_k)
    assert calls == [(stack._sessions[top_k], w) for w in range(1, 5)]


def test_lane_index_maps_experts_to_slots():
    ids = np.array([[7, 2], [2, 9]])
    index = lane_index(np.array([2, 9]), ids, np.array([0, 5]))
    assert index.tolist() == [[-1, 0], [0, 5]]
    assert lane_index(np.array([2]), np.array([[2, -1]])).tolist() == [[2, -1]]     # padding maps to no entry


def test_quantized_lanes_equal_the_fp32_operator_over_the_dequantized_weights():
    from spac_ort.runtime.tiers.quant import dequantize, quantize

    rng = np.random.default_rng(1)
    h, i, n, top_k, t = 16, 8, 5, 2, 3
    experts = [interleaved(*((rng.standard_normal(s) * 0.3).astype(np.float32) for s in ((h, i), (h, i), (i, h))))
               for _ in range(n)]
    x = rng.standard_normal((1, t, h)).astype(np.float32)
    ids = np.array([[0, 1], [2, 3], [4, 0]])
    weights = rng.random((t, top_k)).astype(np.float32)
    for bits in (8, 4):
        q, ref = ExpertStack(n, h, i, bits=bits), ExpertStack(n, h, i)
        for e, (gate_up, down) in enumerate(experts):
            q.write(e, gate_up, down)
            ref.write(e, dequantize(*quantize(gate_up, bits), bits), dequantize(*quantize(down, bits), bits))
        lane = lane_index(np.array([0, 2, 4]), ids)
        np.testing.assert_allclose(q.run(x, lane, weights), ref.run(x, lane, weights), rtol=1e-5, atol=1e-6)
        # and the quantization error itself is small against the fp32 experts
        exact = ExpertStack(n, h, i)
        for e, w in enumerate(experts):
            exact.write(e, *w)
        err = np.abs(q.run(x, lane, weights) - exact.run(x, lane, weights)).max()
        assert err < (0.02 if bits == 8 else 0.3) * np.abs(exact.run(x, lane, weights)).max()


def test_quantization_round_trips_and_packs_nibbles_low_first():
    from spac_ort.runtime.tiers.quant import dequantize, quantize

    w = np.array([[-7.0, 7.0, 1.0, 0.0]], np.float32)
    packed, scale = quantize(w, 4)
    assert scale.tolist() == [1.0] and packed.tolist() == [[(-7 + 8) | ((7 + 8) << 4), (1 + 8) | (8 << 4)]]
    assert dequantize(packed, scale, 4).tolist() == w.tolist()
    w8 = np.array([[-127.0, 127.0, 18.0, 0.0]], np.float32)
    packed8, scale8 = quantize(w8, 8)
    assert packed8.tolist() == [[1, 255, 146, 128]] and dequantize(packed8, scale8, 8).tolist() == w8.tolist()


def test_fp16_lanes_match_the_fp32_operator_over_the_rounded_weights():
    """An fp16 stack (--fast-quant fp16) stores half-precision weights and runs them on the
    MoE operator with fp16 activations; its fillers stay distinct (and weightless) in fp16."""
    from spac_ort.runtime.tiers.pools import fillers
    from spac_ort.runtime.tiers.quant import FP16, ExpertLayout

    rng = np.random.default_rng(2)
    h, i, n, top_k, t = 16, 8, 6, 3, 3
    experts = [interleaved(*((rng.standard_normal(s) * 0.3).astype(np.float32) for s in ((h, i), (h, i), (i, h))))
               for _ in range(n)]
    half, rounded = ExpertStack(n, h, i, bits=FP16), ExpertStack(n, h, i)
    for e, (gate_up, down) in enumerate(experts):
        half.write(e, gate_up, down)
        rounded.write(e, gate_up.astype(np.float16).astype(np.float32), down.astype(np.float16).astype(np.float32))
    assert half.host[0].dtype == np.float16 and ExpertLayout(h, i, FP16).nbytes == 3 * h * i * 2
    x = rng.standard_normal((1, t, h)).astype(np.float32)
    ids = np.array([[0, 1, 2], [3, 4, 5], [5, 0, 2]])
    weights = rng.random((t, top_k)).astype(np.float32)
    lane = lane_index(np.array([0, 2, 5]), ids)
    want = rounded.run(x, lane, weights)
    np.testing.assert_allclose(half.run(x, lane, weights), want, rtol=0, atol=5e-3 * np.abs(want).max())
    none = half.run(x[:, :1], np.full((1, top_k), -1), weights[:1])  # no chosen entry: zeros, not filler output
    assert np.array_equal(none, np.zeros_like(none))
    f = fillers(7168, half=True)[0, 0]
    assert len(np.unique(f.astype(np.float16))) == 7168 and f.max() <= -512
    import pytest

    from spac_ort.errors import ConfigError
    with pytest.raises(ConfigError, match="at most 7168 experts.*--fast-quant fp32"):
        fillers(7169, half=True)


def test_integer_slots_on_cuda_need_sizes_the_gathered_lane_can_block():
    from spac_ort.errors import ConfigError
    from spac_ort.runtime.sessions import CPU, CUDA
    from spac_ort.runtime.tiers.pools import SlotPool
    from spac_ort.runtime.tiers.quant import ExpertLayout, GatheredLayout

    for bits in (8, 4):
        with pytest.raises(ConfigError, match=f"int{bits} slots on CUDA.*intermediate \\(24\\).*divisible by 16.*fp16"):
            SlotPool(4, 32, 24, (CUDA, CPU), bits=bits)
    for bits in (8, 4):                                      # a call's fp16 copies: at most the slots' bytes
        pool, fp16 = SlotPool(10, 32, 48, bits=bits), ExpertLayout(32, 48, 16).nbytes
        assert pool.max_entries * fp16 <= 10 * pool.layout.nbytes < (pool.max_entries + 1) * fp16
    real = GatheredLayout(ExpertLayout(2048, 768, 4))        # Qwen3-30B-A3B's experts: rows of 2048 and 768
    assert real.supported and real.blocks == (2048, 256) and real.shapes[3] == ((2048, 3), np.float16)


def test_gather_calls_keep_the_used_entries_pad_only_to_k_and_split_at_the_cap():
    from spac_ort.runtime.tiers.pools import gather_calls

    index = np.array([[7, -1, 3], [3, 12, -1]])
    [(entries, local)] = gather_calls(index, k=2)
    assert entries.tolist() == [3, 7, 12]                    # ascending, each once
    assert local.tolist() == [[1, -1, 0], [0, 2, -1]]
    assert np.array_equal(entries[np.maximum(local, 0)][index >= 0], index[index >= 0])
    [(entries, _)] = gather_calls(np.array([[5, -1]]), k=8)
    assert entries.tolist() == [5] + [0] * 7                 # at least k entries: the operator picks k
    (first, local1), (second, local2) = gather_calls(index, k=2, cap=2)
    assert first.tolist() == [3, 7] and local1.tolist() == [[1, -1, 0], [0, -1, -1]]
    assert second.tolist() == [12, 0] and local2.tolist() == [[-1, -1, -1], [-1, 0, -1]]
    [(entries, local)] = gather_calls(np.full((1, 3), -1), k=3)   # nothing chosen: one call, no pair in it
    assert entries.tolist() == [0, 0, 0] and (local == -1).all()


@pytest.mark.parametrize("bits", [8, 4])
def test_a_gathered_integer_lane_matches_the_qmoe_lane(bits):
    """Integer slots on CUDA run gathered (the entries a call uses, dequantized to fp16, on
    the MoE operator); the same graph runs on the CPU provider, so it is checked here against
    the CPU's QMoE lane over the same bytes: fp16 rounding apart, the same sums."""
    rng = np.random.default_rng(3)
    h, i, n, top_k, t = 32, 48, 10, 4, 5                   # rows of 32 and of 48 = 3 blocks of 16
    qmoe, gathered = ExpertStack(n, h, i, bits=bits), ExpertStack(n, h, i, bits=bits, gathered=True)
    assert not qmoe.gathered and gathered.gathered
    for e in range(n):
        gate_up, down = interleaved(*((rng.standard_normal(s) * 0.3).astype(np.float32)
                                      for s in ((h, i), (h, i), (i, h))))
        qmoe.write(e, gate_up, down)
        gathered.write_raw(e, qmoe.weights(e))
    assert gathered.host[1].shape == (n, 2 * i, 1) and gathered.host[3].shape == (n, h, 3)
    x = rng.standard_normal((1, t, h)).astype(np.float32)
    ids = np.stack([rng.choice(n, top_k, replace=False) for _ in range(t)])
    weights = rng.random((t, top_k)).astype(np.float32)
    capped = ExpertStack(n, h, i, bits=bits, gathered=True, max_entries=3)   # several operator calls, summed
    for e in range(n):
        capped.write_raw(e, qmoe.weights(e))
    for lane in (lane_index(np.arange(n), ids), lane_index(np.array([1, 4, 8]), ids)):
        want = qmoe.run(x, lane, weights)
        got = gathered.run(x, lane, weights)
        np.testing.assert_allclose(got, want, rtol=0, atol=3e-3 * np.abs(want).max())
        np.testing.assert_allclose(capped.run(x, lane, weights), want, rtol=0, atol=3e-3 * np.abs(want).max())
        assert np.array_equal(got == 0, want == 0)         # a row with no entry in the lane: zeros


def test_a_gathered_stack_warms_every_entry_count_a_width_can_gather():
    """A device session pays on its first call at a new operator shape; a gathered call's
    shape is its width and its entry count, so the warm-up runs each, largest first."""
    from spac_ort.runtime.tiers.pools import gather_calls

    stack = ExpertStack(20, 32, 16, bits=8, gathered=True)
    shapes = []
    run = stack.run
    stack.run = lambda x, index, w: (shapes.append((x.shape[1], gather_calls(index, 8)[0][0].size)), run(x, index, w))[1]
    stack.warm(range(1, 4), 8)
    assert shapes == [(1, 8)] + [(2, a) for a in range(16, 7, -1)] + [(3, a) for a in range(20, 7, -1)]
    capped = ExpertStack(20, 32, 16, bits=8, gathered=True, max_entries=12)
    shapes.clear()
    run = capped.run
    capped.run = lambda x, index, w: (shapes.append((x.shape[1], gather_calls(index, 8)[0][0].size)), run(x, index, w))[1]
    capped.warm([3], 8)
    assert shapes == [(3, a) for a in range(12, 7, -1)]         # no call gathers more than its cap
    plain = ExpertStack(20, 32, 16, bits=8)                  # QMoE over every entry: one call per width
    calls = []
    plain.run = lambda x, index, w: calls.append(index.shape)
    plain.warm(range(1, 4), 8)
    assert calls == [(1, 8), (2, 8), (3, 8)]
