"""The Android deployment bundle (``spac-export target android``). Under ``target/``:

    ort/...                    every session graph in ORT format (the runtime opens these)
    fixed/T1/..., fixed/TK+1/  the same with the token dimension fixed, for NNAPI/CoreML
    runtime/                   the expert graphs the runtime builds (MoE over a layer, one expert), ORT format
    required_operators.config  operators of all of the above, for a reduced onnxruntime build
    mobile_usability.txt       ORT's NNAPI/CoreML partitioning report for every session graph
    device-profile.json        the balancer's cost model on a Snapdragon-class phone (estimated)
    README.md                  how to use the bundle with onnxruntime-android
"""

from __future__ import annotations

from pathlib import Path

from ..manifest_checks import EXPERT_BITS
from ..runtime.graphs import moe_graph, qmoe_graph, swiglu_graph
from ..target_spec import TargetSpec
from .work import TargetBuild
from .convert import fixed_tokens, operators_config, to_ort, to_ort_bytes, usability
from .readme import android_readme

PROVIDERS = ("NnapiExecutionProvider", "XnnpackExecutionProvider", "CPUExecutionProvider")


def _ort_name(rel: str) -> str:
    return str(Path(rel).with_suffix(".ort"))


def add(build: TargetBuild) -> TargetSpec:
    graphs = build.session_graphs()
    tokens = (1, build.draft_tokens + 1)
    mapping, ort_files = {}, []
    for i, rel in enumerate(graphs):
        build.step("ORT format", i, len(graphs))
        out = f"target/ort/{_ort_name(rel)}"
        to_ort(build.base / rel, build.path(out))
        mapping[rel] = out
        ort_files.append(out)
        for t in tokens:
            fixed = f"target/fixed/T{t}/{_ort_name(rel)}"
            fixed_tokens(build.base / rel, build.path(fixed), t)
            ort_files.append(fixed)
    build.step("ORT format", len(graphs), len(graphs))
    ort_files += _runtime_graphs(build)
    build.added += ort_files
    build.step("operators", 0, 1)
    operators_config([build.root / f for f in ort_files], build.path("target/required_operators.config"))
    build.added.append("target/required_operators.config")
    build.step("operators", 1, 1)
    _usability(build, graphs)
    profile = "target/device-profile.json"
    build.write_text(profile, build.profile_json())
    build.write_text("target/README.md", android_readme(build.manifest, build.hardware, tokens))
    return TargetSpec("android", mapping, tokens, PROVIDERS, profile)


def _runtime_graphs(build: TargetBuild) -> list[str]:
    """The graphs the runtime makes in memory, as files a device build loads."""
    d, m = build.manifest.dims, build.manifest
    bits = EXPERT_BITS[m.experts.precision]
    moe = (moe_graph(d.hidden_size, d.expert_intermediate, d.num_experts, d.top_k, m.routing.norm_topk_prob)
           if bits is None else qmoe_graph(d.hidden_size, d.expert_intermediate, d.num_experts, d.top_k, bits))
    graphs = {"moe_layer": moe, "expert": swiglu_graph(d.hidden_size, d.expert_intermediate)}
    out = []
    for name, model in graphs.items():
        rel = f"target/runtime/{name}.ort"
        to_ort_bytes(model, build.path(rel))
        out.append(rel)
    return out


def _usability(build: TargetBuild, graphs: list[str]) -> None:
    parts = []
    for i, rel in enumerate(graphs):
        build.step("usability report", i, len(graphs))
        parts.append(f"=== {rel}\n{usability(build.base / rel)}")
    build.step("usability report", len(graphs), len(graphs))
    build.write_text("target/mobile_usability.txt", "\n".join(parts))
