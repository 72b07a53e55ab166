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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from ..profile import DeviceProfile
from ..runtime.calibrate import median_time
from ..runtime.sessions import CPU
from ..runtime.sensor import StepRecord, read_trace
from ..runtime.spac.policies import TierView, make_policy
from ..runtime.spac.replay import replay

Providers = tuple[Sequence[str], Sequence[str]]     # (fast tier, graphs outside the experts)


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
    v = replace(view, slots=budget_slots, profile=system.device, lanes_overlap=system.overlap)
    # one replay over the whole trace: the placement stays warm from one generation to the next, as in a process
    stats = replay(make_policy(policy), v, records)
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


def measure_system(bundle: Path, prompts: Sequence[Sequence[int]], device: DeviceProfile, overlap: bool,
                   k: int = 4, new_tokens: int = 48, providers: Providers = ((CPU,), (CPU,))) -> SystemProfile:
    """The system profile, measured in place: generations under policy ``cpu`` (plain, then
    with K drafts) give what a target pass costs outside its experts at T = 1 and K+1, a
    draft token, the decode loop's own work per pass, and the engine's work per layer
    (what the experts piece takes beyond the lanes the model charges). Measured in a full
    decode loop, not in isolation: there, the other pieces' weights keep the caches warm
    and attention ran 2x faster than it does in a real run. ``providers``: (fast tier,
    graphs outside the experts), as the measured runs will have them."""
    from ..runtime import Generator
    from ..runtime.config import TierConfig
    from ..runtime.tiers.pools import ExpertStack

    per_pass: dict[int, dict[str, float]] = {}
    fast, backbone = providers
    with Generator.from_bundle(bundle, providers=backbone,
                               tiers=TierConfig("cpu", 0, fast_providers=fast, profile=device)) as gen:
        d, layers = gen.manifest.dims, len(gen.manifest.moe_layers())
        list(gen.generate(list(prompts[0]), max_new_tokens=8, speculative=False))           # warm-up
        for kk in (0, k):
            sums: dict[str, float] = {}
            for ids in prompts:                  # short prompts: the prefill's share of the piece times stays small
                list(gen.generate(list(ids[:8]), max_new_tokens=new_tokens, stop_at_eos=False,
                                  draft_tokens=max(kk, 1), speculative=kk > 0))
                r = gen.report
                for name, v in (("passes", sum(r.k_histogram.values())), ("decode", r.decode_seconds),
                                ("proposed", r.proposed)):
                    sums[name] = sums.get(name, 0.0) + v
                for name, v in r.piece_seconds.items():
                    sums[name] = sums.get(name, 0.0) + v
            per_pass[kk] = sums
        stack = ExpertStack(1, d.hidden_size, d.expert_intermediate)
        x = np.zeros((1, 1, d.hidden_size), np.float32)
        call = median_time(lambda: stack.run(x, np.zeros((1, 1), np.int64), np.ones((1, 1), np.float32)), 30)
    lane_call = max(call - device.slow(1), 0.0)

    def outside(s: dict) -> float:
        return sum(v for n, v in s.items() if n not in ("passes", "decode", "proposed", "experts", "draft"))

    plain, spec = per_pass[0], per_pass[k]
    out1 = outside(plain) / plain["passes"]
    outk = outside(spec) / spec["passes"]
    per_token = max((outk - out1) / k, 0.0)
    loop = max((plain["decode"] - sum(v for n, v in plain.items() if n not in ("passes", "decode", "proposed")))
               / plain["passes"], 0.0)
    modeled = lane_call + d.top_k * device.slow(1)            # the cpu lane of one layer at T = 1, as charged
    engine = max(plain.get("experts", 0.0) / plain["passes"] / layers - modeled, 0.0)
    draft = spec.get("draft", 0.0) / max(spec["proposed"], 1)
    return SystemProfile(device, max(out1 - per_token, 0.0), per_token, draft, lane_call, overlap, loop,
                         {"cpu": engine})


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


def measure_engine(bundle: Path, manifest, records: Sequence[StepRecord], policy: str, budget: str,  # type: ignore[no-untyped-def]
                   system: SystemProfile, passes: int = 40, fast: Sequence[str] = (CPU,)) -> tuple[float, float]:
    """The tiered engine's own seconds per MoE layer pass and per step for ``policy``: its
    wall time over a trace's routing minus what the cost model charges for the lanes."""
    from ..runtime.config import TierConfig
    from ..runtime.loading import _tiered
    from ..runtime.spac.policies import make_policy as _make

    eng = _tiered(bundle, manifest, _make(policy), TierConfig(policy, None if policy == "resident" else budget,
                                                              fast_providers=tuple(fast), profile=system.device,
                                                              overlap=system.overlap))
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
        stats = replay(_make(policy), eng.view, records[: steps + 1])      # the engine's own view: same slots, costs
        modeled = sum(stats.step_seconds[1:]) + sum(stats.step_lanes[1:]) * system.lane_call_s
    finally:
        eng.close()
    return max(layer_s - modeled, 0.0) / max(calls, 1), step_s / max(steps, 1)


def predict_grid(bundle: Path, trace: Path, system: SystemProfile, policies: Sequence[str],
                 budgets: Sequence[str]) -> list[dict]:
    """Predicted tokens/s and hit rate for each policy and budget over one trace."""
    from ..budget import parse_budget
    from ..manifest import load_manifest
    m = load_manifest(bundle)
    d = m.dims
    nbytes = m.expert_bytes()                       # as the bundle stores its experts
    total = len(m.moe_layers()) * d.num_experts
    view = TierView(tuple(m.moe_layers()), d.num_layers, d.num_experts, d.top_k, 0, nbytes, system.device)
    records = load_records(trace, d.num_experts)
    missing = [p for p in policies if ("cpu" if p == "none" else p) not in system.engine_layer_s]
    if missing:
        raise ConfigError(f"the system profile has no engine cost for policy '{missing[0]}'; measure it with "
                          f"spac-bench BUNDLE --trace TRACE --measure-system FILE --policies {','.join(policies)}")
    rows = []
    for policy in policies:
        for budget in ([None] if policy in ("resident", "none") else budgets):
            slots = total if budget is None else min(total, parse_budget(budget, total * nbytes, "fast budget") // nbytes)
            row = predict(records, "cpu" if policy == "none" else policy, slots, view, system)
            rows.append({**row, "policy": policy, "budget": budget})
    return rows


def measure_system_file(bundle: Path, traces: dict, device: DeviceProfile, overlap: bool, prompts: Sequence[str],
                        budget: str, providers: Providers = ((CPU,), (CPU,))) -> SystemProfile:
    """`measure_system` in place, then each policy's engine work on the routing of its trace
    (``traces``: policy -> trace path; the in-place level of policy cpu, plus each policy's
    isolated difference from cpu on its own trace)."""
    from ..manifest import load_manifest
    from ..runtime import Generator

    with Generator.from_bundle(bundle) as gen:
        ids = [gen.encode(p) for p in prompts]
    system = measure_system(bundle, ids, device, overlap, providers=providers)
    m = load_manifest(bundle)
    isolated = {p: measure_engine(bundle, m, load_records(path, m.dims.num_experts), p, budget, system,
                                  fast=providers[0])
                for p, path in traces.items() if p != "none"}
    if "cpu" not in isolated:
        raise ConfigError("the system profile is levelled on policy cpu; include it in --policies")
    for policy, (layer_s, step_s) in isolated.items():
        difference = layer_s - isolated["cpu"][0]           # on different traces when cpu decodes plainly
        system.engine_layer_s[policy] = max(system.engine_layer_s["cpu"] + difference, 0.0)
        system.engine_step_s[policy] = step_s
    return system
