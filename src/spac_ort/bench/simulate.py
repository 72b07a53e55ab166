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
from dataclasses import asdict, dataclass, field, fields
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
    pass_overhead_s: float = 0.0                          # the decode loop's own work per pass (records, observers)
    engine_layer_s: dict = field(default_factory=dict)   # policy -> the tiered engine's own work per MoE layer pass
    engine_step_s: dict = field(default_factory=dict)    # policy -> its work after each pass (the policy's observe)

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
            if f.name not in ("device", "overlap", "engine_layer_s", "engine_step_s") and (not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
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
    v = TierView(view.moe_layers, view.num_layers, view.num_experts, view.top_k, budget_slots, view.expert_bytes,
                 system.device)
    # one replay over the whole trace: the placement stays warm from one generation to the next, as in a process
    stats = replay(make_policy(policy), v, records, overlap=system.overlap)
    tokens, seconds = 0, 0.0
    for r, expert_s, lanes in zip(records, stats.step_seconds, stats.step_lanes):
        if r.kind == "prefill":
            continue
        tokens += len(r.emitted)
        seconds += (system.target_fixed_s + system.target_per_token_s * r.tokens + expert_s
                    + lanes * system.lane_call_s + len(r.proposed) * system.draft_per_token_s
                    + system.pass_overhead_s + len(view.moe_layers) * system.engine_layer_s.get(policy, 0.0)
                    + system.engine_step_s.get(policy, 0.0))
    return {"policy": policy, "slots": budget_slots, "tokens_per_s": tokens / seconds if seconds else 0.0,
            "hit_rate": stats.hit_rate}


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
    pass_overhead = _loop_overhead(gen, ids, outside[1], repeats)
    stack = ExpertStack(1, d.hidden_size, d.expert_intermediate, 1)
    x = np.zeros((1, 1, d.hidden_size), np.float32)
    call = _median(lambda: stack.run(x, np.zeros((1, 1), np.int64), np.ones((1, 1), np.float32)), repeats)
    lane_call = max(call - device.slow(1), 0.0)
    return SystemProfile(device, max(outside[1] - per_token, 0.0), per_token, draft_s, lane_call, overlap,
                         pass_overhead)


class _Drop:
    def on_step(self, record) -> None:  # type: ignore[no-untyped-def]
        pass


def _loop_overhead(gen, ids: Sequence[int], outside_s: float, passes: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds per plain pass the decode loop adds to the pass itself, with a step observer
    attached (so every pass builds its record, as under a policy)."""
    gen.step_observers.append(_Drop())
    try:
        list(gen.generate(list(ids), max_new_tokens=passes + 1, speculative=False, stop_at_eos=False))
    finally:
        gen.step_observers.pop()
    r = gen.report
    experts = r.piece_seconds.get("experts", 0.0) * passes / (passes + 1)      # the prefill's share left out
    return max(r.decode_seconds / passes - outside_s - experts / passes, 0.0)


def _ids(counts: np.ndarray, t: int, top_k: int) -> np.ndarray:
    """Routing ids [T, A] that give a layer's expert ``counts`` (tokens spread over rows)."""
    ids = np.full((t, top_k), -1, np.int64)
    fill = np.zeros(t, np.int64)
    row = 0
    for e in np.flatnonzero(counts):
        for _ in range(int(counts[e])):
            for _ in range(t):                          # the next row with room and without e
                if fill[row] < top_k and e not in ids[row]:
                    break
                row = (row + 1) % t
            ids[row, fill[row]] = e
            fill[row] += 1
            row = (row + 1) % t
    return ids


def measure_engine(bundle: Path, manifest, records: Sequence[StepRecord], policy: str, budget: str,
                   system: SystemProfile, passes: int = 40) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """The tiered engine's own seconds per MoE layer pass and per step for ``policy``: its
    wall time over a trace's routing minus what the cost model charges for the lanes."""
    from ..runtime.config import TierConfig
    from ..runtime.loading import _tiered
    from ..runtime.spac.policies import make_policy as _make

    eng = _tiered(bundle, manifest, _make(policy), TierConfig(policy, None if policy == "resident" else budget,
                                                              profile=system.device, overlap=system.overlap))
    d = manifest.dims
    rng = np.random.default_rng(0)
    layer_s, modeled, steps, step_s, calls = 0.0, 0.0, 0, 0.0, 0
    try:
        for r in [x for x in records if x.kind != "prefill"][:passes]:
            for layer in manifest.moe_layers():
                ids = _ids(r.counts[layer], r.tokens, d.top_k)
                w = np.where(ids >= 0, 1.0 / d.top_k, 0.0).astype(np.float32)
                x = rng.standard_normal((1, r.tokens, d.hidden_size)).astype(np.float32)
                t0 = time.perf_counter()
                eng.run_layer(layer, x, [], ids=ids, weights=w)
                layer_s += time.perf_counter() - t0
                calls += 1
            t0 = time.perf_counter()
            eng.on_step(r)
            step_s += time.perf_counter() - t0
            steps += 1
        v = TierView(tuple(manifest.moe_layers()), d.num_layers, d.num_experts, d.top_k, eng.num_slots,
                     eng.expert_bytes, system.device)
        stats = replay(_make(policy), v, records[: steps + 1], overlap=system.overlap)
        modeled = sum(stats.step_seconds[1:]) + sum(stats.step_lanes[1:]) * system.lane_call_s
    finally:
        eng.close()
    return max(layer_s - modeled, 0.0) / max(calls, 1), step_s / max(steps, 1)
