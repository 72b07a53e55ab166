"""The tiered engine under random routing, random budgets and many steps: outputs equal
the CPU-only reference (to fp32 rounding: the lanes add experts in another order), and
the slot table stays consistent."""

from __future__ import annotations

import numpy as np
import pytest

from spac_ort.errors import BudgetError
from spac_ort.manifest import load_manifest
from spac_ort.profile import DeviceProfile
from spac_ort.runtime.sensor import StepRecord
from spac_ort.runtime.spac.policies import SpacOptions, make_policy
from spac_ort.runtime.spac.utility import UtilityConfig
from spac_ort.runtime.tiers.pools import interleaved
from spac_ort.runtime.tiers.slots import SlotState, SlotTable
from spac_ort.runtime.tiers.tiered import TieredExperts

GPU = DeviceProfile("gpu-like", 60e-6, 2e-6, 1.6e-3, 1e-4, 10e-6, 25e9)


def _engine(bundle, policy, budget, **kw):
    m = load_manifest(bundle)
    return TieredExperts(bundle, m, make_policy(policy, SpacOptions(utility=UtilityConfig.for_mode("scaled"))),
                         budget, profile=GPU, **kw), m


@pytest.mark.parametrize("policy, sync", [("spac", False), ("spac", True), ("lru", False)])
def test_stress_random_routing(demo_bundle, policy, sync):
    rng = np.random.default_rng(hash(policy) % 1000 + sync)
    ref, m = _engine(demo_bundle, "cpu", 0)
    d = m.dims
    for trial in range(2):
        budget = int(rng.integers(d.top_k, 60)) * ref.expert_bytes
        eng, _ = _engine(demo_bundle, policy, budget, overlap=not sync)
        try:
            for step in range(300):
                t = int(rng.integers(1, 10))
                counts = np.zeros((d.num_layers, d.num_experts), dtype=np.int64)
                for layer in m.moe_layers():
                    hot = rng.choice(d.num_experts, 12, replace=False)      # skewed, reused routing
                    ids = np.stack([rng.choice(hot if rng.random() < 0.7 else np.arange(d.num_experts),
                                               d.top_k, replace=False) for _ in range(t)])
                    w = rng.random((t, d.top_k)).astype(np.float32)
                    x = rng.standard_normal((1, t, d.hidden_size)).astype(np.float32)
                    got = eng.run_layer(layer, x, [], ids=ids, weights=w)
                    want = ref.run_layer(layer, x, [], ids=ids, weights=w)
                    # the lanes sum their experts in another order than the CPU-only run: fp32 rounding
                    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6,
                                               err_msg=f"trial {trial} step {step} layer {layer}")
                    counts[layer] = np.bincount(ids.ravel(), minlength=d.num_experts)
                eng.on_step(StepRecord(step, "verify", t, (), 0, (), counts, {}, {}))
                eng.table.check()
                assert all(s.pins == 0 for s in eng.table.slots), "a pin leaked"
            if eng.prefetcher:
                eng.prefetcher.drain()
            eng.table.check()
            s = eng.summary(1)
            assert s["evictions"] > 0 and s["fetches_on_demand"] + s["fetches_prefetch"] > 0
            # every READY slot holds the weights of the expert the table says
            for i, slot in enumerate(eng.table.slots):
                if slot.state is SlotState.READY:
                    for got, w in zip(eng.fast.weights(i), interleaved(*eng.store.read(*slot.key))):
                        assert np.array_equal(got, w)
        finally:
            eng.close()


def test_pinned_slot_is_never_claimed():
    table = SlotTable(2)
    for key in ((0, 1), (0, 2)):
        table.commit(table.claim(key, lambda k: 0.0))
    assert table.pin([(0, 1)]) == [(0, 1)]
    slot = table.claim((0, 3), lambda k: 0.0)            # must take expert 2's slot, not the pinned one
    assert table.slots[slot].key == (0, 3) and table.slot_of((0, 1)) is not None
    table.pin([(0, 3)])                                    # LOADING: not pinnable
    assert table.claim((0, 4), lambda k: 0.0) is None      # 1 pinned + 1 loading: nothing to take
    table.unpin([(0, 1)])
    assert table.claim((0, 4), lambda k: 0.0) is not None
    table.check()


def test_claim_respects_utility_floor():
    table = SlotTable(1)
    table.commit(table.claim((0, 1), lambda k: 0.0))
    levels = {(0, 1): 3, (0, 2): 2, (0, 3): 4}
    assert table.claim((0, 2), levels.get, floor=levels[(0, 2)]) is None     # would evict a higher level
    assert table.claim((0, 3), levels.get, floor=levels[(0, 3)]) == 0


def test_budget_errors_say_what_fits(demo_bundle):
    m = load_manifest(demo_bundle)
    with pytest.raises(BudgetError, match=r"needs 256; use --fast-budget of at least"):
        _engine(demo_bundle, "resident", 10 * m.experts.data_size)
    with pytest.raises(BudgetError, match=r"holds 1 experts.*needs 4"):
        _engine(demo_bundle, "lru", m.experts.data_size)
    with pytest.raises(BudgetError, match="--ram-budget of at least"):
        _engine(demo_bundle, "spac", None, ram_budget=100)


def test_ram_budget_reads_from_storage(demo_bundle):
    m = load_manifest(demo_bundle)
    eng, _ = _engine(demo_bundle, "cpu", 0, ram_budget=8 * m.experts.data_size)
    ref, _ = _engine(demo_bundle, "cpu", 0)
    rng = np.random.default_rng(3)
    for _ in range(50):
        ids = np.stack([rng.choice(64, 4, replace=False) for _ in range(3)])
        w = rng.random((3, 4)).astype(np.float32)
        x = rng.standard_normal((1, 3, 192)).astype(np.float32)
        np.testing.assert_allclose(eng.run_layer(1, x, [], ids=ids, weights=w),
                                   ref.run_layer(1, x, [], ids=ids, weights=w), rtol=2e-5, atol=2e-6)
    assert eng.store.resident_bytes() <= 8 * m.experts.data_size
    assert eng.store.counters.storage_reads > 64


def test_graphs_use_an_ir_version_older_runtimes_read(demo_bundle):
    """onnxruntime 1.30 (the CUDA build on the GPU host) reads IR <= 13; phones lag more."""
    import onnx

    from spac_ort.runtime.graphs import swiglu_graph

    assert onnx.load_from_string(swiglu_graph(8, 4)).ir_version == 8
    for rel in ("embed.onnx", "final.onnx", "layers/000/layer.onnx", "layers/000/experts/000.onnx",
                "draft/model.onnx"):
        assert onnx.load(str(demo_bundle / rel), load_external_data=False).ir_version <= 10, rel


def test_claimable_for_counts_only_what_the_floors_allow():
    table = SlotTable(4)
    rank = np.zeros((1, 8))
    rank[0, :4] = [1, 2, 3, 4]                     # occupants 0..3 rank 1..4
    for e in range(3):
        table.commit(table.claim((0, e), rank))
    # one empty slot; occupants rank 1, 2, 3
    assert table.claimable_for(np.array([0.5, 0.5]), rank) == 1                 # only the empty slot
    assert table.claimable_for(np.array([0.5, 2.5, 2.5]), rank) == 3           # empty + ranks 1 and 2
    assert table.claimable_for(np.array([np.inf] * 5), rank) == 4
    assert table.claimable_for(np.array([np.inf] * 5), rank, busy=[(0, 0)]) == 3   # expert 0 is about to be pinned
    table.pin([(0, 1)])
    assert table.claimable_for(np.array([np.inf] * 5), rank) == 3


def test_an_emulated_link_makes_every_copy_take_bytes_over_rate(demo_bundle):
    import time

    m = load_manifest(demo_bundle)
    rate = 20 * m.experts.data_size                      # 20 experts a second: 50 ms per copy
    eng = TieredExperts(demo_bundle, m, make_policy("lru"), 8 * m.experts.data_size, link_bytes_per_s=rate)
    try:
        before = eng.counters.bytes_copied
        t0 = time.perf_counter()
        eng._load(0, (1, 5))
        assert time.perf_counter() - t0 >= 0.9 * eng.expert_bytes / rate
        assert eng.counters.bytes_copied - before == eng.expert_bytes
    finally:
        eng.close()


def test_quantized_experts_fit_more_slots_and_generate(demo_bundle):
    from spac_ort.runtime import Generator
    from spac_ort.runtime.config import TierConfig

    slots = {}
    for quant in (None, "int8", "int4"):
        with Generator.from_bundle(demo_bundle, tiers=TierConfig("spac", "10%", expert_quant=quant)) as gen:
            out = list(gen.generate("def add(a, b):", max_new_tokens=12, draft_tokens=2))
            slots[quant] = gen.report.tiers["fast_slots"]
            assert len(out) == 12 and gen.report.tiers["hit_rate"] > 0
    assert slots["int8"] >= 3.5 * slots[None] and slots["int4"] >= 1.8 * slots["int8"]
    with pytest.raises(Exception, match="drop --ram-budget or --expert-quant"):
        Generator.from_bundle(demo_bundle, tiers=TierConfig("spac", "25%", "50%", expert_quant="int8"))
    with pytest.raises(Exception, match="unknown expert quantization 'int3'"):
        TierConfig("spac", expert_quant="int3")


def test_loading_warms_a_fast_tier_on_a_device_without_touching_its_slots(demo_bundle, monkeypatch):
    """A fast tier on an accelerator (forced here over the CPU stand-in) has its lane run
    once at every decoding width at load; no slot is claimed or pinned by it, and the
    tokens stay those of an unwarmed run."""
    from spac_ort.runtime import Generator, widths
    from spac_ort.runtime.config import TierConfig
    from spac_ort.runtime.tiers.pools import ExpertStack
    from spac_ort.runtime.tiers.tiered import TieredExperts

    def run():
        with Generator.from_bundle(demo_bundle, tiers=TierConfig("lru", "10%")) as gen:
            claims = gen.experts.table.counters.claims
            return list(gen.generate("def add(a, b):", max_new_tokens=12, stop_at_eos=False)), claims

    plain, claims = run()
    warmed = []
    original = ExpertStack.warm
    monkeypatch.setattr(ExpertStack, "warm", lambda self, ws, k: (warmed.append((list(ws), k)), original(self, ws, k)))
    monkeypatch.setattr(TieredExperts, "on_device", property(lambda self: self.fast is not None))
    tokens, claims_warm = run()
    assert warmed == [(list(widths.DECODE), 4)]              # the demo model routes top-4
    assert tokens == plain and claims_warm == claims
