"""The Jetson deployment bundle (``spac-export target jetson``). Under ``target/``:

    providers.json        CUDA and TensorRT provider options (TensorRT engine cache, fp16) for
                          applications that open the bundle's graphs themselves
    device-profile.json   the balancer's cost model on an Orin-class board (estimated)
    spac-run.sh           a launcher: spac-run on this bundle with the board's defaults
    spac-ort.service      a systemd unit serving the bundle with spac-serve
    README.md             budgets under unified memory, and how to install the above

The graphs stay the bundle's fp32 ONNX graphs (the CUDA provider runs them as they are).
"""

from __future__ import annotations

import json

from ..target_spec import TargetSpec
from .work import TargetBuild
from .readme import jetson_readme, launcher, systemd_unit

PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ENGINE_CACHE = "/var/cache/spac-ort/trt"


def provider_options() -> dict:
    """ONNX Runtime provider options, in order of preference."""
    return {"providers": [
        ["TensorrtExecutionProvider", {"trt_fp16_enable": "True", "trt_engine_cache_enable": "True",
                                       "trt_engine_cache_path": ENGINE_CACHE, "trt_timing_cache_enable": "True",
                                       "trt_max_workspace_size": str(2 << 30)}],
        ["CUDAExecutionProvider", {"device_id": "0", "arena_extend_strategy": "kSameAsRequested",
                                   "cudnn_conv_algo_search": "HEURISTIC"}],
        ["CPUExecutionProvider", {}]]}


def add(build: TargetBuild) -> TargetSpec:
    build.step("jetson files", 0, 1)
    build.write_text("target/providers.json", json.dumps(provider_options(), indent=1) + "\n")
    profile = "target/device-profile.json"
    build.write_text(profile, build.profile_json())
    build.write_text("target/spac-run.sh", launcher(build.hardware), mode=0o755)
    build.write_text("target/spac-ort.service", systemd_unit())
    build.write_text("target/README.md", jetson_readme(build.manifest, build.hardware))
    build.step("jetson files", 1, 1)
    return TargetSpec("jetson", {}, (), PROVIDERS, profile)
