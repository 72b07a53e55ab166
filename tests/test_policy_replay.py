"""The model-free replay runs the tapes as `benchmarks.realsize` does: one process, a
warm-up tape first, each prompt starting from the slots the previous one left."""

from __future__ import annotations

import pytest

from benchmarks import policy_replay
from benchmarks.realsize import TAPES
from spac_ort.runtime.spac.policies import TierView
from spac_ort.runtime.spac.replay import replay
from spac_ort.runtime.tape import load_tapes
from spac_ort.runtime.tiers.tiered import CPU_STAND_IN


@pytest.mark.skipif(not TAPES.exists(), reason=f"no replay tapes at {TAPES}")
def test_prompts_start_from_the_slots_the_previous_one_left():
    tape = load_tapes(TAPES)[0]
    slots, expert_bytes = 170, 2373632                    # 66% of the 2 x 128 experts (int4 slots)
    (warm,) = [r for r in policy_replay.run([tape], 2, slots, 2, CPU_STAND_IN, expert_bytes) if r["policy"] == "lru"]
    view = TierView((0, 1), 2, policy_replay.EXPERTS, policy_replay.TOP_K, slots, expert_bytes, CPU_STAND_IN, True)
    cold = replay(policy_replay.policies()["lru"], view, policy_replay.windows(tape, 2, 2))
    # the same prompt again after itself: its experts are resident from the start
    assert warm["hit_rate"] > cold.hit_rate + 0.2 and cold.hit_rate > 0
