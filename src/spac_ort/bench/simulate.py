"""Predict decode tokens/s per policy from a recorded trace and a cost model, without
running the model: ``spac-bench --simulate SYSTEM.json --trace TRACE.jsonl``.

A trace (``spac-run --trace``) holds, per target pass, its T tokens, the drafts it
verified, the tokens it emitted and the tokens routed to each expert of each layer. Under
greedy decoding these are the same under every policy, so one trace serves all of them.
The policy is replayed over it (`spac.replay`: the slot table's rules, prefetch
included), and every pass is charged:

    target pass   target_fixed_s + target_per_token_s * T        (all but the experts)
    experts       per layer: the fast lane (its experts by the DeviceProfile, plus the
                  copies it waits for) and the CPU lane, at once with an accelerator
                  (overlap) or one after the other with a CPU stand-in; plus
                  lane_call_s for each lane call
    drafting      draft_per_token_s per proposed token

Tokens/s is the tokens the decode passes emitted over their predicted time.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from ..profile import DeviceProfile
from ..runtime.sensor import StepRecord, read_trace
from ..runtime.spac.policies import TierView, make_policy
from ..runtime.spac.replay import replay


@dataclass(frozen=True)
class SystemProfile:
    """A `DeviceProfile` for the experts and the link, and what the rest of a step costs."""

    device: DeviceProfile
    target_fixed_s: float
    target_per_token_s: float
    draft_per_token_s: float
    lane_call_s: float
    overlap: bool

    def save(self, path: Path) -> None:
        data = asdict(self)
        Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "SystemProfile":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            device = DeviceProfile(**data.pop("device"))
            system = cls(device=device, **data)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"system profile {path} is unreadable or incomplete ({type(exc).__name__}); write one "
                              "with spac-bench BUNDLE --measure-system FILE") from None
        for f in fields(cls):
            v = getattr(system, f.name)
            if f.name not in ("device", "overlap") and (not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
                raise ConfigError(f"system profile {path}: {f.name} is {v!r}; it must be a finite number >= 0")
        return system


def load_records(path: Path, num_experts: int) -> list[StepRecord]:
    """A ``--trace`` file as step records (routing counts; no ids or weights)."""
    try:
        raw = read_trace(path, num_experts)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ConfigError(f"trace {path} is unreadable ({type(exc).__name__}); record one with spac-run --trace") \
            from None
    return [StepRecord(r["step"], r["kind"], r["tokens"], tuple(r["proposed"]), r["accepted"], tuple(r["emitted"]),
                       r["counts"], {}, {}) for r in raw]


def predict(records: Sequence[StepRecord], policy: str, budget_slots: int, view: TierView,
            system: SystemProfile) -> dict:
    """Predicted decode tokens/s (and hit rate) of ``policy`` with ``budget_slots`` fast slots."""
    runs = _runs(records)
    v = TierView(view.moe_layers, view.num_layers, view.num_experts, view.top_k, budget_slots, view.expert_bytes,
                 system.device)
    tokens, seconds, hits, pairs = 0, 0.0, 0, 0
    for run in runs:                   # each generation starts from the policy's initial state, as a fresh run
        stats = replay(make_policy(policy), v, run, overlap=system.overlap)
        for r, expert_s, lanes in zip(run, stats.step_seconds, stats.step_lanes):
            if r.kind == "prefill":
                continue
            tokens += len(r.emitted)
            seconds += (system.target_fixed_s + system.target_per_token_s * r.tokens + expert_s
                        + lanes * system.lane_call_s + len(r.proposed) * system.draft_per_token_s)
        hits, pairs = hits + stats.pairs_hit, pairs + stats.pairs
    return {"policy": policy, "slots": budget_slots, "tokens_per_s": tokens / seconds if seconds else 0.0,
            "hit_rate": hits / pairs if pairs else 0.0}


def _runs(records: Sequence[StepRecord]) -> list[list[StepRecord]]:
    """Split a trace into generations (each starts with a prefill)."""
    runs: list[list[StepRecord]] = []
    for r in records:
        if r.kind == "prefill" or not runs:
            runs.append([])
        runs[-1].append(r)
    return runs


def _median(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure_system(gen, ids: Sequence[int], device: DeviceProfile, overlap: bool, k: int = 4,
                   repeats: int = 30) -> SystemProfile:  # type: ignore[no-untyped-def]
    """What a target pass costs outside its experts (T = 1 and K+1), a draft token, and a
    lane call, measured with ``gen`` (a generator without tiers) after ``ids``."""
    from ..runtime.tiers.pools import ExpertStack

    bb, d = gen.backbone, gen.manifest.dims
    cache = bb.new_cache()
    bb.forward(list(ids), cache)
    start = cache.length
    outside = {}
    for t in (1, k + 1):
        def one(t=t) -> None:
            bb.forward(list(ids[:t]), cache, last_only=t == 1)
            cache.truncate(start)
        one()
        bb.timers.reset()
        total = _median(one, repeats)                  # repeats + 1 passes since the reset
        outside[t] = max(total - bb.timers.seconds.get("experts", 0.0) / (repeats + 1), 0.0)
    per_token = max((outside[k + 1] - outside[1]) / k, 0.0)
    draft_s = 0.0
    if gen.draft is not None:
        dc = gen.draft.new_cache()
        gen.draft.forward(list(ids), dc)
        dstart = dc.length

        def draft_one() -> None:
            gen.draft.forward(list(ids[:1]), dc)
            dc.truncate(dstart)
        draft_s = _median(draft_one, repeats)
    stack = ExpertStack(1, d.hidden_size, d.expert_intermediate, 1)
    x = np.zeros((1, 1, d.hidden_size), np.float32)
    call = _median(lambda: stack.run(x, np.zeros((1, 1), np.int64), np.ones((1, 1), np.float32)), repeats)
    lane_call = max(call - device.slow(1), 0.0)
    return SystemProfile(device, max(outside[1] - per_token, 0.0), per_token, draft_s, lane_call, overlap)
