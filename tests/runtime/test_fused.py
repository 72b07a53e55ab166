"""The fused runtime's KV buffers: in-place growth keeps the cache, rollback is a length
change, and generation across a growth stays token-identical to transformers."""

from __future__ import annotations

import numpy as np
import pytest

from spac_ort.runtime.fused import FusedKV


def test_growth_keeps_the_cache_and_moves_the_buffers():
    kv = FusedKV(num_layers=2, heads=2, key_dim=4, value_dim=3, capacity=4)
    for layer in range(2):
        kv.keys[layer][:, :, :3] = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4) + layer
        kv.values[layer][:, :, :3] = -np.arange(18, dtype=np.float32).reshape(1, 2, 3, 3)
    kv.length = 3
    before = kv.generation
    kv.reserve(4)                                    # fits: nothing moves
    assert kv.generation == before and kv.capacity == 4
    kv.reserve(5)
    assert kv.generation != before and kv.capacity >= 8
    assert kv.keys[1].shape == (1, 2, kv.capacity, 4)
    np.testing.assert_array_equal(kv.keys[1][:, :, :3], np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4) + 1)
    np.testing.assert_array_equal(kv.values[0][:, :, :3], -np.arange(18, dtype=np.float32).reshape(1, 2, 3, 3))


def test_rollback_is_a_length_change():
    kv = FusedKV(num_layers=1, heads=1, key_dim=2, value_dim=2, capacity=8)
    kv.length = 6
    kv.truncate(4)
    assert kv.length == 4
    with pytest.raises(ValueError):
        kv.truncate(5)


def test_generation_across_a_cache_growth_matches_transformers(demo_bundle):
    """A 250-token prompt outgrows the first buffers (256 positions) while decoding, in the
    target's cache and the draft's; plain and speculative tokens must equal transformers'."""
    from spac_ort.models import DEMO_TARGET
    from spac_ort.runtime import Generator
    from tests.tiny import hf_greedy

    gen = Generator.from_bundle(demo_bundle)
    ids = [int(i) for i in np.random.default_rng(3).integers(1, 8000, 250)]
    want = hf_greedy(DEMO_TARGET, ids, 20)
    assert list(gen.generate(ids, max_new_tokens=20, speculative=False, stop_at_eos=False)) == want
    assert list(gen.generate(ids, max_new_tokens=20, draft_tokens=4, stop_at_eos=False)) == want


def test_screened_head_gives_the_fp32_argmax(demo_bundle):
    """Greedy decoding reads the 8-bit screen with exact candidates (or the fp32 head where
    the screen cannot settle the argmax): every row's argmax must be the fp32 head's."""
    from spac_ort.runtime import Generator

    bb = Generator.from_bundle(demo_bundle).backbone
    assert bb.final_greedy is not None
    ids = [int(i) for i in np.random.default_rng(5).integers(1, 8000, 40)]
    caches = {True: bb.new_cache(), False: bb.new_cache()}
    for step in range(48):
        window = ids if step == 0 else [int(i) for i in np.random.default_rng(step).integers(1, 8000, 1 + step % 5)]
        out = {}
        for greedy, cache in caches.items():
            bb.greedy = greedy
            out[greedy] = bb.forward(window, cache, last_only=step == 0)
        np.testing.assert_array_equal(out[True].argmax(axis=-1), out[False].argmax(axis=-1))


def test_moe_operator_backend_under_portable_graphs(tmp_path):
    """`--experts moe` with portable graphs runs the MoE operator from the host (log-weight
    logits, output scaled by the weight sum): the same tokens as the grouped backend."""
    from spac_ort.export import ExportOptions, export_bundle
    from spac_ort.models import DEMO_TARGET
    from spac_ort.runtime import Generator

    bundle = export_bundle(ExportOptions(DEMO_TARGET, tmp_path / "portable", graphs="portable",
                                         check_model=False)).bundle
    ids = [0, 17, 923, 4000, 51, 7]
    grouped = list(Generator.from_bundle(bundle, experts="grouped").generate(ids, max_new_tokens=24))
    moe = Generator.from_bundle(bundle, experts="moe")
    assert list(moe.generate(ids, max_new_tokens=24)) == grouped
    assert moe.experts.calls() > 0


def test_device_sessions_bind_their_inputs_before_every_call(demo_bundle, monkeypatch):
    """A session on a device copies host inputs when they are bound: the fused backbone and
    draft bind again before each call there. Exercised on the CPU by treating every
    session as one on a device: the tokens must not change, and rebinding must happen."""
    import spac_ort.runtime.fused as fused
    import spac_ort.runtime.fused_draft as fused_draft
    import spac_ort.runtime.sessions as sessions
    from spac_ort.runtime import Generator

    def generate():
        with Generator.from_bundle(demo_bundle) as gen:
            return list(gen.generate("def add(a, b):", max_new_tokens=24, stop_at_eos=False, draft_tokens=3))

    plain = generate()
    calls = []
    wrapped = sessions.bound_again

    def counting(call, binding, inputs, kv=None):
        again = wrapped(call, binding, inputs, kv)
        return lambda: (calls.append(kv is not None), again())[1]

    monkeypatch.setattr(fused, "off_host", lambda session: True)
    monkeypatch.setattr(fused_draft, "off_host", lambda session: True)
    monkeypatch.setattr(fused, "bound_again", counting)
    assert generate() == plain
    assert calls and any(calls)                      # layer calls bind their KV cache again too


def test_sessions_off_the_host_are_told_apart():
    from spac_ort.runtime.sessions import off_host

    class Session:
        def __init__(self, providers):
            self.providers = providers

        def get_providers(self):
            return self.providers

    assert off_host(Session(["CUDAExecutionProvider", "CPUExecutionProvider"]))
    assert not off_host(Session(["CPUExecutionProvider"]))


def test_a_cache_held_as_device_allocations_decodes_the_same(demo_bundle, monkeypatch):
    """The KV cache as OrtValues of their own (as on the GPU; here allocations on the CPU
    device), grown past its first capacity: the tokens do not change."""
    import spac_ort.runtime.fused as fused
    import spac_ort.runtime.fused_draft as fused_draft
    from spac_ort.runtime import Generator

    def generate():
        with Generator.from_bundle(demo_bundle) as gen:
            ids = gen.encode("def add(a, b):\n    return a + b\n" * 30)
            assert len(ids) > 256                                    # past the cache's first capacity
            out = list(gen.generate(ids, max_new_tokens=40, stop_at_eos=False, draft_tokens=3))
            return out, gen.backbone.new_cache()

    plain, cache = generate()
    assert cache.device is None and cache.keys
    monkeypatch.setattr(fused, "kv_device", lambda manifest, providers: "cpu")
    monkeypatch.setattr(fused_draft.FusedDraft, "new_cache",
                        lambda self: FusedKV(self.shape.num_layers, self.shape.num_kv_heads, self.shape.head_dim,
                                             self.shape.head_dim, device="cpu"))
    on_device, cache = generate()
    assert cache.device == "cpu" and not cache.keys                 # held by its OrtValues alone
    assert on_device == plain


def test_the_cache_lives_on_the_gpu_only_with_fp16_graphs_on_cuda():
    from types import SimpleNamespace

    from spac_ort.runtime.fused_kv import first_capacity, kv_device
    from spac_ort.target_spec import TargetSpec

    cuda = ("CUDAExecutionProvider", "CPUExecutionProvider")
    jetson16 = SimpleNamespace(target=TargetSpec("jetson", {"embed.onnx": "target/fp16/embed.onnx"}))
    assert kv_device(jetson16, cuda) == "cuda"
    assert kv_device(jetson16, ("CPUExecutionProvider",)) is None
    assert kv_device(SimpleNamespace(target=TargetSpec("jetson", {})), cuda) is None          # fp32 graphs
    assert kv_device(SimpleNamespace(target=TargetSpec("android", {"a.onnx": "target/ort/a.ort"})), cuda) is None
    assert kv_device(SimpleNamespace(target=None), cuda) is None
    # TensorRT has no kernel for the fused attention: under (TensorRT, CUDA, CPU) it runs on CUDA
    assert (first_capacity(None, 40960), first_capacity("cuda", 40960), first_capacity("cuda", 2048)) == (256, 4096, 2048)
    assert first_capacity("cuda", 128) == 256
    assert kv_device(jetson16, ("TensorrtExecutionProvider", *cuda)) == "cuda"
    assert kv_device(jetson16, ("TensorrtExecutionProvider", "CPUExecutionProvider")) is None


def test_attention_on_a_device_warms_every_width_and_keeps_the_tokens(demo_bundle, monkeypatch):
    """Attention on a device (exercised on the CPU by placing the "device" buffers with the
    CPU's allocator): the KV cache and the rotary tables are placed OrtValues, loading runs
    the layer graphs and the draft once at every window width, and the tokens stay those of
    the host path. Warming runs no experts and leaves no plan behind. A prompt wider than a
    window runs as pieces of warmed widths or powers of two, in the target and the draft."""
    import spac_ort.runtime.fused as fused
    import spac_ort.runtime.loading as loading
    from spac_ort.runtime import Generator, widths

    prompt = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    # multiply two numbers\n"

    def generate():
        with Generator.from_bundle(demo_bundle) as gen:
            n = len(gen.encode(prompt))
            assert n > 2 * widths.DECODE[-1] and n & (n - 1)       # not itself a width the pieces use
            return list(gen.generate(prompt, max_new_tokens=24, stop_at_eos=False, draft_tokens=3)), gen

    plain, _ = generate()
    warmed: list = []
    for cls in (fused.FusedBackbone, loading.FusedDraft):
        original = cls.warm

        def spy(self, ws, original=original):
            experts_before = self.experts.calls() if hasattr(self, "experts") else 0
            original(self, ws)
            warmed.append((type(self).__name__, list(ws), getattr(self, "_plans", {}).copy(),
                           (self.experts.calls() if hasattr(self, "experts") else 0) - experts_before))
        monkeypatch.setattr(cls, "warm", spy)
    fed: list = []
    for cls, name in ((fused.FusedBackbone, "_forward"), (loading.FusedDraft, "_feed")):
        def feed(self, ids, cache, *rest, original=getattr(cls, name)):
            fed.append(len(ids))
            return original(self, ids, cache, *rest)
        monkeypatch.setattr(cls, name, feed)
    monkeypatch.setattr(fused, "kv_device", lambda manifest, providers: "cpu")
    monkeypatch.setattr(loading, "kv_device", lambda manifest, providers: "cpu")
    tokens, gen = generate()
    assert tokens == plain
    assert [w[0] for w in warmed] == ["FusedBackbone", "FusedDraft"]
    assert all(w[1] == list(widths.DECODE) and not w[2] and w[3] == 0 for w in warmed)
    powers = {1 << i for i in range(4, 16)}
    assert all(n in widths.DECODE or n in powers for n in fed) and max(fed) >= 16
    cache = gen.backbone.new_cache()
    assert cache.device == "cpu" and not cache.keys
    assert cache.capacity == gen.manifest.dims.max_positions == 2048      # one first capacity on a device


def test_a_long_feed_runs_as_warmed_widths_and_powers_of_two():
    from spac_ort.runtime.widths import DECODE, feed, pieces

    assert pieces(198) == [128, 64, 6] and pieces(11) == [9, 2] and pieces(5) == [5] and pieces(16) == [16]
    assert pieces(31) == [16, 9, 6] and pieces(4096) == [4096]
    assert feed(198, None) == [198] and feed(198, "cuda") == [128, 64, 6] and feed(9, "cuda") == [9]
    for n in range(1, 700):
        got = pieces(n)
        assert sum(got) == n and got == sorted(got, reverse=True)
        assert all(p in DECODE or (p >= 16 and p & (p - 1) == 0) for p in got)
        assert len(got) <= n.bit_length() + 1


def test_the_report_keeps_prefill_piece_times_apart(demo_bundle):
    """piece_seconds cover prefill and decoding; prefill_piece_seconds the prefill alone, so
    decoding's share (what benchmarks report per token) is their difference."""
    from spac_ort.runtime import Generator

    with Generator.from_bundle(demo_bundle) as gen:
        list(gen.generate("def add(a, b):", max_new_tokens=12, stop_at_eos=False, draft_tokens=3))
        r = gen.report
    assert {"embed", "attention", "head", "draft"} <= set(r.prefill_piece_seconds)
    assert all(0 < r.prefill_piece_seconds[k] <= r.piece_seconds[k] for k in r.prefill_piece_seconds)
    assert r.piece_seconds["attention"] > r.prefill_piece_seconds["attention"]     # decoding ran the layers too
    assert r.to_dict()["prefill_piece_seconds"] == r.prefill_piece_seconds


def test_greedy_decoding_off_the_host_uses_the_full_head(demo_bundle, monkeypatch):
    """The 8-bit screen is for the host; where the head runs on a device (forced here: every
    session counts as off the host, so inputs are bound again before each call) greedy
    decoding takes the argmax of the full head, and gives the same tokens."""
    import spac_ort.runtime.fused as fused
    from spac_ort.runtime import Generator

    def run():
        with Generator.from_bundle(demo_bundle) as gen:
            out = list(gen.generate("def add(a, b):", max_new_tokens=16, stop_at_eos=False))
            return out, gen.backbone.final_greedy, gen.report.piece_calls["head"]

    screened, greedy_piece, _ = run()
    assert greedy_piece is not None
    monkeypatch.setattr(fused, "off_host", lambda session: True)
    tokens, greedy_piece, head_calls = run()
    assert tokens == screened and greedy_piece is None and head_calls > 0
