"""Replay tapes: a synthetic model driven by a trained model's routing and draft agreement
reproduces the recorded tokens under every policy, accepts what the tape implies, and
routes as the tape says."""

from __future__ import annotations

import numpy as np
import pytest

from spac_ort.errors import ConfigError
from spac_ort.runtime import Generator
from spac_ort.runtime.config import TierConfig
from spac_ort.runtime.sensor import RoutingRecorder
from spac_ort.runtime.tape import Replay, load_tapes, record, save_tapes

from ..conftest import load_prompts, spread


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):  # type: ignore[no-untyped-def]
    from spac_ort.export.synthetic import export_synthetic

    out = tmp_path_factory.mktemp("synthetic") / "tiny"
    export_synthetic("tiny", out, layers=3)
    return out


@pytest.fixture(scope="module")
def tapes(ref_bundle, tmp_path_factory):  # type: ignore[no-untyped-def]
    prompts = spread(load_prompts(), 1)[:3]
    with Generator.from_bundle(ref_bundle) as gen:
        recorded = [record(gen, gen.encode(p["prompt"]), 24, p["domain"]) for p in prompts]
    path = tmp_path_factory.mktemp("tapes") / "tapes.jsonl.gz"
    save_tapes(path, recorded)
    return load_tapes(path)


def _windows(agree: tuple[bool, ...], k: int) -> tuple[int, int]:
    """Proposed and accepted drafts of fixed-K greedy decoding over agreement bits."""
    proposed = accepted = 0
    i, n = 1, len(agree)                  # the prefill commits the first token
    while i < n:
        kk = min(k, n - i - 1)
        if kk == 0:                       # the last token: a plain pass
            i += 1
            continue
        run = 0
        while run < kk and agree[i + run]:
            run += 1
        proposed, accepted, i = proposed + kk, accepted + run, i + run + 1
    return proposed, accepted


@pytest.mark.refmodel
@pytest.mark.parametrize("policy", [None, "lru", "sd-static", "spac"])
def test_replay_reproduces_the_tape_under_every_policy(synthetic, tapes, policy):
    tiers = TierConfig(policy, "17%") if policy else None
    with Generator.from_bundle(synthetic, tiers=tiers) as gen:
        for tape in tapes:
            Replay(tape, gen.manifest).attach(gen)
            k = 0 if policy == "lru" else 4
            out = list(gen.generate(list(tape.prompt), max_new_tokens=len(tape.tokens), draft_tokens=k or "auto"))
            assert out == list(tape.tokens)
            if k:
                assert (gen.report.proposed, gen.report.accepted) == _windows(tape.agree, k)


@pytest.mark.refmodel
def test_replay_routes_as_the_tape_says(synthetic, tapes):
    tape = tapes[0]
    with Generator.from_bundle(synthetic) as gen:
        Replay(tape, gen.manifest).attach(gen)
        seen = RoutingRecorder(gen.manifest.dims.num_layers, gen.manifest.dims.num_experts)
        gen.backbone.observers.append(seen)
        cache = gen.backbone.new_cache()
        gen.backbone.forward(list(tape.prompt), cache)
        for layer in gen.manifest.moe_layers():
            src = layer * tape.ids.shape[0] // len(gen.manifest.moe_layers())
            np.testing.assert_array_equal(seen.ids[layer], tape.ids[src, :len(tape.prompt)])
            np.testing.assert_allclose(seen.weights[layer], tape.weights[src, :len(tape.prompt)], rtol=1e-6)


@pytest.mark.refmodel
def test_replay_refuses_a_model_of_another_routing_shape(demo_bundle, tapes):
    with Generator.from_bundle(demo_bundle) as gen:
        with pytest.raises(ConfigError, match="matching model"):
            Replay(tapes[0], gen.manifest)


def test_synthetic_export_refuses_unknown_models(tmp_path):
    from spac_ort.export.synthetic import export_synthetic

    with pytest.raises(ConfigError, match="unknown synthetic model"):
        export_synthetic("gpt-5", tmp_path / "x", layers=1)
    assert list(tmp_path.iterdir()) == []


def test_a_synthetic_draft_keeps_the_real_pairs_share_of_layers(tmp_path):
    """Qwen3-0.6B has 28 layers to Qwen3-30B-A3B's 48: a 2-layer target gets a 1-layer
    draft by default, an 8-layer one 5, never none; --draft-layers overrides it."""
    import json

    from spac_ort.export.synthetic import default_draft_layers, write_checkpoints

    assert [default_draft_layers("qwen3-30b-a3b", n) for n in (1, 2, 8, 48)] == [1, 1, 5, 28]
    _, draft = write_checkpoints("tiny", tmp_path / "a", layers=4)
    assert json.loads((draft / "config.json").read_text())["num_hidden_layers"] == default_draft_layers("tiny", 4) == 2
    _, draft = write_checkpoints("tiny", tmp_path / "b", layers=4, draft_layers=3)
    assert json.loads((draft / "config.json").read_text())["num_hidden_layers"] == 3
