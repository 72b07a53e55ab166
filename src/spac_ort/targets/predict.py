"""Predicted decode tokens/s on devices we do not own. A `SystemProfile` for the simulator
(`bench.simulate.predict`) is built from a `HardwareSpec`'s published bandwidths and a
model's geometry; the simulator then replays a policy over a trace recorded on the
reference model. These are PREDICTIONS from specification-derived cost models, not
measurements.

Method (a roofline, additive: reading weights and arithmetic do not overlap):

- Experts: `HardwareSpec.profile` at an expert's bytes in the chosen precision (int8 and
  int4 as the runtime stores them, with one fp32 scale per row; fp16 2 bytes a weight).
- A target pass outside its experts reads the weights of attention, norms and routers of
  every layer and the LM head once, and the KV cache, at the bandwidth of where they run;
  it launches `KERNELS_PER_LAYER` kernels a layer; the engine makes a session call a layer
  plus embed and head. Per token it adds 2 FLOP per weight at the rate of where it runs.
- A draft token reads the dense draft's weights and KV cache once, launches its kernels
  and makes one session call.
- The engine's own work (session and lane calls, per-layer placement work, the policy's
  observe) is what the simulator's check measured on the reference machine
  (docs/results/simulate_check.json: an AMD EPYC core at 2.6 GHz), divided by the device
  CPU's assumed speed against that core (`Host.cpu_speed`). Without `EngineCosts` the
  profile has none of it: the bound of a native decode loop on the same hardware.

Layer scaling: the traces come from the reference model (8 MoE layers of 128 experts,
top-8, Qwen3-30B-A3B's routing shape). Each trace layer stands for ``layers / 8`` layers
of the model (6 for Qwen3-30B-A3B): an expert of the trace is a group of that many
experts, one a layer, routed alike. Its costs, bytes, copies, lane calls and the engine's
work a layer are scaled by that factor, and budgets are shares of all experts. Limits:
the grouped layers route identically (real layers do not, so hit rates and the spread of
a pass's load are the reference model's); `static` places whole layers of the model,
which fall between whole trace layers, and is interpolated (`budget_points`); the
reference model's expert locality and its draft's acceptance (about 2.1 tokens a pass at
K=4) stand for the real model's and its draft's; bandwidth shared by lanes running at
once is not modelled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

from ..bench.simulate import SystemProfile, predict
from ..errors import ConfigError
from ..profile import DeviceProfile
from ..runtime.sensor import StepRecord
from ..runtime.spac.policies import TierView
from ..runtime.tiers.quant import ExpertLayout
from .hardware import GB, JETSON_AGX_ORIN, JETSON_ORIN_NX, PHONE, HardwareSpec

# ---- every assumption of the predictions (the hardware's own are in targets/hardware.py) ----
DENSE_BYTES = {"fp16": 2.0, "int8": 1.0, "int4": 0.5}   # a weight outside the experts (scales neglected)
KV_BYTES = 2                 # the KV cache in fp16
CONTEXT_TOKENS = 512         # KV cache read per pass: prompts of 64-200 tokens plus the generation
KERNELS_PER_LAYER = 12       # kernels a layer outside its experts: 2 norms, q/k/v/o, q/k norms, rope,
                             # attention, router, top-k; a draft layer about as many (its MLP for the router)
CALLS_OUTSIDE_LAYERS = 2     # session calls a pass besides one a layer: embed and head
NVME = replace(              # the Orin NX cannot hold int4 experts of a 30B model in 16 GB: they stay on an NVMe SSD
    JETSON_ORIN_NX, name="jetson-orin-nx-16gb-nvme",
    slow_bytes_per_s=0.70 * 5.0 * GB,   # assumed SSD: 5 GB/s sequential (PCIe Gen4 x4 on the module, DS-10712),
    link_bytes_per_s=0.70 * 5.0 * GB,   # 70% of it reached with 2-5 MB reads, as for the phone's flash
    link_latency_s=100e-6,
    notes="as Orin NX, with the experts on an NVMe SSD: the slow lane is the CPU reading them from it; fetch: SSD "
          "to DRAM")


@dataclass(frozen=True)
class Host:
    """Where a device runs the pieces outside the experts, and its CPU (all assumptions)."""

    cpu_speed: float             # a device CPU core against the reference machine's, for the engine's own work
    dense_bytes_per_s: float     # attention, norms, routers and the KV cache
    dense_flops: float
    head_bytes_per_s: float      # the LM head
    head_flops: float
    draft_bytes_per_s: float
    draft_flops: float
    launch_s: float              # one kernel of the dense pieces
    reserved_bytes: float        # memory the OS, other apps and the runtimes keep
    experts_in_memory: bool      # the slow lane reads the experts from DRAM (they take memory), not from storage


_PHONE_CPU = 0.35 * 76.8 * GB    # the CPU cores' share of LPDDR5X peak (targets/hardware.py)
HOSTS = {
    # attention, routers and the draft on the CPU (the usability report: NNAPI runs none of them; their KV concat
    # keeps a symbolic past), at its share of DRAM and its 60 GFLOP/s; the head on the NPU. Cortex-X4 at 3.3 GHz
    # taken as fast as the reference core; 5 us a CPU kernel; Android and other apps keep 5 GB; experts on flash
    PHONE.name: Host(1.0, _PHONE_CPU, PHONE.slow_flops, PHONE.fast_bytes_per_s, PHONE.fast_flops, _PHONE_CPU,
                     PHONE.slow_flops, 5e-6, 5 * GB, False),
    # everything dense on the GPU, a kernel launch costing the spec's call_s; Cortex-A78AE at 2.2 GHz taken as 0.6
    # of the reference core; L4T and the CUDA context keep 3 GB; the CPU lane's experts share the DRAM
    JETSON_AGX_ORIN.name: Host(0.6, JETSON_AGX_ORIN.fast_bytes_per_s, JETSON_AGX_ORIN.fast_flops,
                               JETSON_AGX_ORIN.fast_bytes_per_s, JETSON_AGX_ORIN.fast_flops,
                               JETSON_AGX_ORIN.fast_bytes_per_s, JETSON_AGX_ORIN.fast_flops,
                               JETSON_AGX_ORIN.call_s, 3 * GB, True),
    # as AGX Orin, with A78AE cores at 2.0 GHz: 0.55 of the reference core
    JETSON_ORIN_NX.name: Host(0.55, JETSON_ORIN_NX.fast_bytes_per_s, JETSON_ORIN_NX.fast_flops,
                              JETSON_ORIN_NX.fast_bytes_per_s, JETSON_ORIN_NX.fast_flops,
                              JETSON_ORIN_NX.fast_bytes_per_s, JETSON_ORIN_NX.fast_flops,
                              JETSON_ORIN_NX.call_s, 3 * GB, True),
}
HOSTS[NVME.name] = replace(HOSTS[JETSON_ORIN_NX.name], experts_in_memory=False)


@dataclass(frozen=True)
class DenseShape:
    """A dense decoder (the draft); defaults: Qwen3-0.6B (same tokenizer as Qwen3-30B-A3B)."""

    hidden: int = 1024
    layers: int = 28
    intermediate: int = 3072
    heads: int = 16
    kv_heads: int = 8
    head_dim: int = 128

    def params(self, vocab: int) -> int:
        """Weights read per token: every layer and the tied embedding as the LM head."""
        attn = self.hidden * self.head_dim * 2 * (self.heads + self.kv_heads)
        return self.layers * (attn + 3 * self.hidden * self.intermediate + 2 * self.hidden) + vocab * self.hidden


@dataclass(frozen=True)
class ModelShape:
    """A MoE decoder's geometry; defaults: Qwen3-30B-A3B (config.json; untied embeddings)."""

    hidden: int = 2048
    layers: int = 48
    experts: int = 128
    top_k: int = 8
    expert_intermediate: int = 768
    heads: int = 32
    kv_heads: int = 4
    head_dim: int = 128
    vocab: int = 151936
    draft: DenseShape = field(default_factory=DenseShape)

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "experts", "top_k", "expert_intermediate", "heads", "kv_heads", "head_dim",
                     "vocab"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"model shape field '{name}' is {v!r}; it must be a positive integer")

    def expert_bytes(self, precision: str) -> int:
        """Bytes of one expert (gate, up, down) as the fast tier and the CPU lane read it."""
        if precision == "fp16":
            return 2 * 3 * self.hidden * self.expert_intermediate
        if precision not in ("int8", "int4"):
            raise ConfigError(f"unknown expert precision '{precision}'; use fp16, int8 or int4")
        return ExpertLayout(self.hidden, self.expert_intermediate, 8 if precision == "int8" else 4).nbytes

    def layer_params(self) -> int:
        """Weights of one layer outside its experts: attention (with q/k norms), router, norms."""
        attn = self.hidden * self.head_dim * 2 * (self.heads + self.kv_heads) + 2 * self.head_dim
        return attn + self.hidden * self.experts + 2 * self.hidden

    def total_params(self) -> int:
        return (self.layers * (self.layer_params() + self.experts * 3 * self.hidden * self.expert_intermediate)
                + 2 * self.vocab * self.hidden + self.hidden)

    def kv_bytes(self, tokens: int) -> float:
        return tokens * self.layers * 2 * self.kv_heads * self.head_dim * KV_BYTES

    def draft_kv_bytes(self, tokens: int) -> float:
        d = self.draft
        return tokens * d.layers * 2 * d.kv_heads * d.head_dim * KV_BYTES


@dataclass(frozen=True)
class Deployment:
    """One device running one model: its hardware, where the dense pieces run, precisions."""

    spec: HardwareSpec
    host: Host
    expert_precision: str = "int8"
    dense_precision: str = "fp16"     # attention, routers, head, embedding and the draft

    def __post_init__(self) -> None:
        if self.expert_precision not in ("fp16", "int8", "int4"):
            raise ConfigError(f"unknown expert precision '{self.expert_precision}'; use fp16, int8 or int4")
        if self.dense_precision not in DENSE_BYTES:
            raise ConfigError(f"unknown dense precision '{self.dense_precision}'; use fp16, int8 or int4")
        if not self.host.cpu_speed > 0 or not math.isfinite(self.host.cpu_speed):
            raise ConfigError(f"host cpu_speed is {self.host.cpu_speed!r}; it must be a finite number > 0")


def deployment(name: str, expert_precision: str = "int8", dense_precision: str = "fp16") -> Deployment:
    """The deployment of a device of `hardware.HARDWARE` (or the Orin NX with experts on NVMe)."""
    specs = {s.name: s for s in (PHONE, JETSON_AGX_ORIN, JETSON_ORIN_NX, NVME)}
    if name not in specs:
        raise ConfigError(f"unknown device '{name}'; choose one of {', '.join(specs)}")
    return Deployment(specs[name], HOSTS[name], expert_precision, dense_precision)


@dataclass(frozen=True)
class EngineCosts:
    """The engine's own work, measured on the reference machine (a system profile of it)."""

    session_call_s: float        # one session call of a pass, with the reference model's tiny compute (an upper bound)
    draft_call_s: float          # one draft token's session call (the same)
    lane_call_s: float
    pass_overhead_s: float
    engine_layer_s: dict         # policy -> per MoE layer pass
    engine_step_s: dict          # policy -> per pass (scaled with layers: an upper bound)

    @classmethod
    def from_system(cls, s: SystemProfile, trace_layers: int) -> "EngineCosts":
        return cls(s.target_fixed_s / (trace_layers + CALLS_OUTSIDE_LAYERS), s.draft_per_token_s, s.lane_call_s,
                   s.pass_overhead_s, dict(s.engine_layer_s), dict(s.engine_step_s))

    @classmethod
    def load(cls, path: Path, trace_layers: int) -> "EngineCosts":
        """From a simulator check's results (its "system" section) or a saved system profile."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            data = data.get("system", data)
            system = SystemProfile(**{**data, "device": DeviceProfile(**data["device"])})
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"engine costs {path} are unreadable ({type(exc).__name__}); use "
                              "docs/results/simulate_check.json or a spac-bench --measure-system file") from None
        return cls.from_system(system, trace_layers)


POLICY_K = {"cpu": 0, "static": 0, "lru": 0, "sd-static": 4, "spac": 4, "resident": 4}   # the trace each replays


def layer_scale(shape: ModelShape, trace_layers: int) -> float:
    """How many of the model's layers one trace layer stands for."""
    if trace_layers <= 0 or shape.layers < trace_layers:
        raise ConfigError(f"the trace has {trace_layers} MoE layers and the model {shape.layers}; use a trace with "
                          "at least one layer and no more than the model has")
    return shape.layers / trace_layers


def expert_profile(d: Deployment, shape: ModelShape, scale: float) -> DeviceProfile:
    """`HardwareSpec.profile` for the model's experts, for a group of ``scale`` of them."""
    p = d.spec.profile(shape.expert_bytes(d.expert_precision), 2 * 3 * shape.hidden * shape.expert_intermediate)
    return DeviceProfile(f"{p.name}, {scale:g} layers a trace layer", p.fast_fixed_s * scale,
                         p.fast_per_token_s * scale, p.slow_fixed_s * scale, p.slow_per_token_s * scale,
                         p.link_latency_s * scale, p.link_bytes_per_s)


def system_profile(d: Deployment, shape: ModelShape, trace_layers: int,
                   engine: Optional[EngineCosts] = None) -> SystemProfile:
    """The simulator's cost model of ``d`` running ``shape``, in units of a trace with
    ``trace_layers`` MoE layers. Without ``engine``: the hardware's costs only."""
    scale = layer_scale(shape, trace_layers)
    h, w = d.host, DENSE_BYTES[d.dense_precision]
    dense = shape.layers * shape.layer_params()
    head = shape.vocab * shape.hidden
    fixed = ((dense * w + shape.kv_bytes(CONTEXT_TOKENS)) / h.dense_bytes_per_s + head * w / h.head_bytes_per_s
             + shape.layers * KERNELS_PER_LAYER * h.launch_s)
    per_token = 2 * dense / h.dense_flops + 2 * head / h.head_flops
    dp = shape.draft.params(shape.vocab)
    draft = ((dp * w + shape.draft_kv_bytes(CONTEXT_TOKENS)) / h.draft_bytes_per_s + 2 * dp / h.draft_flops
             + shape.draft.layers * KERNELS_PER_LAYER * h.launch_s)
    e = engine or EngineCosts(0.0, 0.0, 0.0, 0.0, {}, {})
    cpu = h.cpu_speed
    return SystemProfile(
        expert_profile(d, shape, scale),
        target_fixed_s=fixed + (shape.layers + CALLS_OUTSIDE_LAYERS) * e.session_call_s / cpu,
        target_per_token_s=per_token,
        draft_per_token_s=draft + e.draft_call_s / cpu,
        lane_call_s=scale * e.lane_call_s / cpu,
        overlap=True,                                   # an accelerator beside the CPU: the lanes run at once
        pass_overhead_s=e.pass_overhead_s / cpu,
        engine_layer_s={p: scale * v / cpu for p, v in e.engine_layer_s.items()},
        engine_step_s={p: scale * v / cpu for p, v in e.engine_step_s.items()})


def memory_need(d: Deployment, shape: ModelShape, fast_share: float, speculative: bool = True) -> float:
    """Bytes of DRAM a deployment holds: the reserve, the dense weights (and the draft's),
    the KV caches, the fast slots, and the slow lane's experts where they live in DRAM."""
    w = DENSE_BYTES[d.dense_precision]
    experts = shape.layers * shape.experts * shape.expert_bytes(d.expert_precision)
    dense = (shape.layers * shape.layer_params() + 2 * shape.vocab * shape.hidden) * w
    draft = shape.draft.params(shape.vocab) * w + shape.draft_kv_bytes(CONTEXT_TOKENS) if speculative else 0.0
    slow = experts if d.host.experts_in_memory and fast_share < 1 else 0.0
    return d.host.reserved_bytes + dense + shape.kv_bytes(CONTEXT_TOKENS) + draft + fast_share * experts + slow


def budget_points(policy: str, share: float, shape: ModelShape, trace_layers: int) -> list[tuple[float, float]]:
    """Shares of the trace's experts to replay, and the weight of each in a cell's time per
    token. `static` places whole layers of the model, floor(share x layers) of them; that
    falls between whole trace layers, and as its time is a sum over layers it is
    interpolated between the two (the other policies: the share itself)."""
    if policy == "resident":
        return [(1.0, 1.0)]
    if policy not in ("static", "sd-static"):
        return [(share, 1.0)]
    x = math.floor(share * shape.layers + 1e-9) * trace_layers / shape.layers
    n, f = int(x + 1e-9), x - int(x + 1e-9)
    return [(n / trace_layers, 1.0 - f)] + ([((n + 1) / trace_layers, f)] if f > 1e-9 else [])


def predict_cell(records: Sequence[StepRecord], policy: str, share: float, d: Deployment, shape: ModelShape,
                 engine: Optional[EngineCosts]) -> dict:
    """PREDICTED tokens/s of ``policy`` with ``share`` of all experts fast (resident: all)
    on ``d``: with the engine's own costs, and the hardware-only bound (``native``)."""
    if not records:
        raise ConfigError("the trace has no records; record one with spac-run BUNDLE --trace FILE")
    trace_layers, num_experts = records[0].counts.shape
    if num_experts != shape.experts:
        raise ConfigError(f"the trace routes over {num_experts} experts a layer and the model has {shape.experts}; "
                          "use a trace of a model with the same number of experts")
    if not 0 < share <= 1:
        raise ConfigError(f"fast budget share {share!r} is outside (0, 1]; give a share of all experts, e.g. 0.17")
    system, native = system_profile(d, shape, trace_layers, engine), system_profile(d, shape, trace_layers)
    if engine is not None and policy not in system.engine_layer_s:
        raise ConfigError(f"the engine costs have none for policy '{policy}'; measure them with "
                          "python -m benchmarks.simulate_check")
    total, nbytes = trace_layers * shape.experts, shape.expert_bytes(d.expert_precision)
    view = TierView(tuple(range(trace_layers)), trace_layers, shape.experts, shape.top_k, 0,
                    round(layer_scale(shape, trace_layers) * nbytes), system.device)
    per_token, native_per_token, hit, fast = 0.0, 0.0, 0.0, 0.0
    for point, weight in budget_points(policy, share, shape, trace_layers):
        slots = int(point * total + 1e-9)
        row, bound = predict(records, policy, slots, view, system), predict(records, policy, slots, view, native)
        per_token += weight / row["tokens_per_s"]
        native_per_token += weight / bound["tokens_per_s"]
        hit, fast = hit + weight * row["hit_rate"], fast + weight * slots / total
    need = memory_need(d, shape, fast, any(r.proposed for r in records))
    return {"policy": policy, "fast_share": fast, "fast_bytes": fast * nbytes * shape.layers * shape.experts,
            "tokens_per_s": 1 / per_token, "native_tokens_per_s": 1 / native_per_token, "hit_rate": hit,
            "memory_bytes": need, "fits": need <= d.spec.memory_bytes}
