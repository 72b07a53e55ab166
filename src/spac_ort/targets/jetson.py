"""The Jetson deployment bundle (``spac-export target jetson``). Under ``target/``:

    fp16/...              every session graph but the greedy head in fp16 (inputs and outputs
                          fp32, the KV cache fp16): the runtime opens these (``--precision
                          fp16``, the default)
    providers.json        CUDA and TensorRT provider options (TensorRT engine cache, fp16): the
                          runtime passes them to its graph sessions
    device-profile.json   the balancer's cost model on an Orin-class board (estimated)
    spac-run.sh           a launcher: spac-run on this bundle with the board's defaults
    spac-ort.service      a systemd unit serving the bundle with spac-serve
    README.md             budgets under unified memory, and how to install the above

The greedy head (``final_greedy.onnx``) stays fp32: it screens with 8-bit logits and decides
with exact fp32 ones, where the head runs on the CPU; on CUDA greedy decoding takes the fp16
full head (`runtime.fused`). With ``--precision fp32`` every graph stays the bundle's own.
"""

from __future__ import annotations

import json

from ..target_spec import TargetSpec
from .convert import to_fp16
from .work import TargetBuild
from .readme import jetson_readme, launcher, systemd_unit

PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ENGINE_CACHE = "/var/cache/spac-ort/trt"
PROVIDER_OPTIONS = "target/providers.json"      # read by the runtime (`runtime.loading`)


def provider_options() -> dict:
    """ONNX Runtime provider options, in order of preference."""
    return {"providers": [
        ["TensorrtExecutionProvider", {"trt_fp16_enable": "True", "trt_engine_cache_enable": "True",
                                       "trt_engine_cache_path": ENGINE_CACHE, "trt_timing_cache_enable": "True",
                                       "trt_max_workspace_size": str(2 << 30)}],
        ["CUDAExecutionProvider", {"device_id": "0", "arena_extend_strategy": "kSameAsRequested",
                                   "cudnn_conv_algo_search": "HEURISTIC"}],
        ["CPUExecutionProvider", {}]]}


KEEP_FP32 = ("final_greedy.onnx",)          # exact fp32 logits decide its argmax


def add(build: TargetBuild) -> TargetSpec:
    mapping = _fp16_graphs(build) if build.precision == "fp16" else {}
    build.step("jetson files", 0, 1)
    build.write_text(PROVIDER_OPTIONS, json.dumps(provider_options(), indent=1) + "\n")
    profile = "target/device-profile.json"
    build.write_text(profile, build.profile_json())
    build.write_text("target/spac-run.sh", launcher(build.hardware), mode=0o755)
    build.write_text("target/spac-ort.service", systemd_unit())
    build.write_text("target/README.md", jetson_readme(build.manifest, build.hardware, bool(mapping)))
    build.step("jetson files", 1, 1)
    return TargetSpec("jetson", mapping, (), PROVIDERS, profile, PROVIDER_OPTIONS)


def _fp16_graphs(build: TargetBuild) -> dict[str, str]:
    graphs = [rel for rel in build.session_graphs() if rel not in KEEP_FP32]
    mapping = {}
    for i, rel in enumerate(graphs):
        build.step("fp16 graphs", i, len(graphs))
        out = f"target/fp16/{rel}"
        to_fp16(build.base / rel, build.path(out))
        mapping[rel] = out
        build.added += [out, out + ".data"]
    build.step("fp16 graphs", len(graphs), len(graphs))
    return mapping
