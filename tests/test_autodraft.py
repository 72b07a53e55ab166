"""``draft_tokens="auto"`` on the demo bundle: lossless, policy-aware, fixed K unchanged."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from spac_ort.cli import run as run_cli
from spac_ort.errors import ConfigError
from spac_ort.runtime import Generator, SamplingConfig
from spac_ort.runtime.config import TierConfig
from tests.conftest import load_prompts


class Kinds:
    """Step observer: the kind and size of every target pass, and the tokens it emitted."""

    def __init__(self) -> None:
        self.passes: list[tuple[str, int]] = []
        self.emitted: list[int] = []

    def on_step(self, r) -> None:
        self.passes.append((r.kind, r.tokens))
        self.emitted.append(len(r.emitted))


def test_greedy_auto_equals_plain(demo_bundle):
    gen = Generator.from_bundle(demo_bundle)
    for p in load_prompts()[::23]:                            # 7 prompts over the domains
        ids = gen.encode(p["prompt"])
        plain = list(gen.generate(ids, max_new_tokens=40, speculative=False))
        auto = list(gen.generate(ids, max_new_tokens=40))
        assert auto == plain, p["id"]
        r = gen.report
        assert r.draft_mode == "auto" and r.speculative
        assert sum(r.k_histogram.values()) == r.target_steps
        assert r.proposed == sum(k * n for k, n in r.k_histogram.items())
        assert max(r.k_histogram) <= r.draft_tokens


def test_auto_times_a_plain_pass_and_then_probes(demo_bundle):
    gen = Generator.from_bundle(demo_bundle)
    kinds = Kinds()
    gen.step_observers.append(kinds)
    list(gen.generate("def add(a, b):", max_new_tokens=24, stop_at_eos=False))
    assert kinds.passes[1] == ("decode", 1)                   # after prefill: one plain pass is timed
    assert any(kind == "verify" for kind, _ in kinds.passes)  # then a window at least once
    line = gen.report.render().splitlines()
    assert any(ln.startswith("K per target pass (0 = plain): 0 x") for ln in line)
    assert "speculative K=auto" in gen.report.render()
    d = gen.report.to_dict()
    assert d["draft_mode"] == "auto" and sum(d["k_histogram"].values()) == d["target_steps"]


def test_policy_spac_never_runs_a_plain_pass(demo_bundle):
    with Generator.from_bundle(demo_bundle, tiers=TierConfig("spac", "20%")) as gen:
        kinds = Kinds()
        gen.step_observers.append(kinds)
        ids = gen.encode("int main(void) {")
        out = list(gen.generate(ids, max_new_tokens=32, stop_at_eos=False))
        decode = [i for i, (kind, _) in enumerate(kinds.passes) if kind == "decode"]
        # only a pass with a single token left to generate may run without a window
        assert decode in ([], [len(kinds.passes) - 1])
        assert gen.report.k_histogram.get(0, 0) == len(decode)
    assert out == list(Generator.from_bundle(demo_bundle).generate(ids, max_new_tokens=32, stop_at_eos=False,
                                                                   speculative=False))


def test_policy_without_speculation_stays_plain(demo_bundle):
    with Generator.from_bundle(demo_bundle, tiers=TierConfig("lru", "20%")) as gen:
        list(gen.generate("int main(void) {", max_new_tokens=12))
        assert not gen.report.speculative and gen.report.proposed == 0
        assert set(gen.report.k_histogram) == {0}


def test_fixed_k_is_unchanged(demo_bundle):
    gen = Generator.from_bundle(demo_bundle)
    ids = gen.encode("def fib(n):")
    plain = list(gen.generate(ids, max_new_tokens=30, stop_at_eos=False, speculative=False))
    kinds = Kinds()
    gen.step_observers.append(kinds)
    assert list(gen.generate(ids, max_new_tokens=30, stop_at_eos=False, draft_tokens=4)) == plain
    r = gen.report
    assert r.draft_mode == 4 and r.draft_tokens == 4
    done = 0
    for (kind, t), emitted in zip(kinds.passes, kinds.emitted):
        if kind != "prefill":                                 # K=4, cut short only by max_new_tokens
            assert t == min(5, 30 - done), (done, t)
        done += emitted
    assert "speculative K=4" in r.render()


def test_speculative_false_and_no_draft_decode_plainly(demo_bundle):
    gen = Generator.from_bundle(demo_bundle)
    list(gen.generate("x", max_new_tokens=8, speculative=False))
    assert gen.report.proposed == 0 and gen.report.draft_mode == 0
    gen.draft = None
    list(gen.generate("x", max_new_tokens=8))                 # auto without a draft: plain, silently
    assert not gen.report.speculative and gen.report.proposed == 0
    with pytest.raises(ConfigError, match="no draft model"):
        gen.generate("x", max_new_tokens=8, draft_tokens=4, speculative=True)


@pytest.mark.parametrize("bad", ["fast", 2.5, True, None])
def test_draft_tokens_must_be_a_number_or_auto(demo_bundle, bad):
    gen = Generator.from_bundle(demo_bundle)
    with pytest.raises(ConfigError, match="draft-tokens"):
        gen.generate("x", max_new_tokens=4, draft_tokens=bad)


def test_seeded_sampling_with_auto_repeats(demo_bundle):
    gen = Generator.from_bundle(demo_bundle)
    cfg = SamplingConfig(temperature=0.8, top_p=0.95, seed=5)
    a = list(gen.generate("def add(a, b):", max_new_tokens=40, sampling=cfg))
    hist = dict(gen.report.k_histogram)
    b = list(gen.generate("def add(a, b):", max_new_tokens=40, sampling=cfg))
    assert a == b and gen.report.k_histogram == hist


def test_cli_draft_tokens_option(demo_bundle):
    def run(*args: str):
        return CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "def add(a, b):", "-n", "12", *args])

    res = run("--json")                                        # the default is auto
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["report"]["draft_mode"] == "auto"
    res = run("-k", "AUTO")
    assert res.exit_code == 0 and "speculative K=auto" in res.stderr and "K per target pass" in res.stderr
    res = run("-k", "3", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["report"]["draft_mode"] == 3
    res = run("--no-lookup", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["report"]["lookup_windows"] == 0
    res = run("-k", "fast")
    assert res.exit_code == 2
    assert res.stderr.strip().startswith("error: draft-tokens 'fast'") and len(res.stderr.strip().splitlines()) == 1


def test_context_drafts_are_lossless_and_can_be_turned_off(demo_bundle):
    gen = Generator.from_bundle(demo_bundle)
    ids = gen.encode("one two three four one two three four one two three four one two")
    plain = list(gen.generate(ids, max_new_tokens=48, stop_at_eos=False, speculative=False))
    auto = list(gen.generate(ids, max_new_tokens=48, stop_at_eos=False))
    assert auto == plain
    with_lookup = gen.report
    assert with_lookup.lookup_windows > 0 and with_lookup.lookup_proposed >= with_lookup.lookup_windows
    assert "drafts from the context" in with_lookup.render()
    off = list(gen.generate(ids, max_new_tokens=48, stop_at_eos=False, lookup=False))
    assert off == plain and gen.report.lookup_windows == 0


def test_seeded_sampling_with_context_drafts_repeats(demo_bundle):
    gen = Generator.from_bundle(demo_bundle)
    ids = gen.encode("a b a b a b a b a b a b")
    sampling = SamplingConfig(temperature=0.8, seed=11)
    first = list(gen.generate(ids, max_new_tokens=32, sampling=sampling, stop_at_eos=False))
    assert list(gen.generate(ids, max_new_tokens=32, sampling=sampling, stop_at_eos=False)) == first
