"""The texts a deployment bundle ships: READMEs, the Jetson launcher and systemd unit."""

from __future__ import annotations

from typing import Sequence

from ..manifest import Manifest
from .hardware import HardwareSpec

_DEMO_NOTE = ("If this bundle was made from the embedded demo model (6.8M parameters), it writes "
              "plausible-looking gibberish: it exists to exercise the pipeline, not to be read.\n")


def _model_line(m: Manifest) -> str:
    return (f"{m.family.value}, {m.dims.num_layers} layers, {m.dims.num_experts} experts top-{m.dims.top_k}, "
            f"{m.graphs.value} graphs; one expert is {m.expert_bytes() / 2**20:.1f} MiB of fp32 weights")


def android_readme(m: Manifest, hw: HardwareSpec, tokens: Sequence[int]) -> str:
    t = ", ".join(str(x) for x in tokens)
    return f"""# Android deployment bundle

Model: {_model_line(m)}.
{_DEMO_NOTE}
## What is here

- `target/ort/`: every session graph (embed, layers, head, draft) in ORT format, which
  onnxruntime-android loads without the ONNX parser. The manifest maps each `.onnx` graph
  to its `.ort` file; `spac-run` on this bundle opens the `.ort` files.
- `target/fixed/T{{n}}/`: the same graphs with the token dimension fixed to {t} (a decode step,
  and a verify window of K + 1 tokens). NNAPI and CoreML only take nodes with fixed
  shapes. The KV cache's past length stays symbolic, so its nodes stay on the CPU.
- `target/runtime/`: the expert graphs the runtime builds in memory (`moe_layer.ort`: one
  `com.microsoft.MoE` call over a layer's experts; `expert.ort`: one expert), for a
  device build that has no Python.
- `target/required_operators.config`: every operator of the above. Build a reduced
  onnxruntime with it: `./build.sh --android --minimal_build extended --include_ops_by_config
  target/required_operators.config` (see ONNX Runtime's "custom build" documentation).
- `target/mobile_usability.txt`: ORT's report of how NNAPI and CoreML would partition each
  graph. Fused graphs use ONNX Runtime's contrib operators (GroupQueryAttention, MoE),
  which NNAPI and CoreML do not run. Bundles exported with `spac-export --graphs portable`
  use standard operators only, and are the ones to try on an NPU.
- `target/device-profile.json`: the balancer's cost model on a {hw.name}, estimated from
  published specifications (see `spac_ort/targets/hardware.py` for sources and
  assumptions). Pass it with `--profile`.
- The expert weights stay the bundle's `.onnx.data` files: the runtime reads them as raw
  arrays (memory-mapped from flash on a phone), not as sessions.

## Using it

On a development machine, the bundle runs like any other:

    spac-run BUNDLE --prompt "..." --provider cpu
    spac-run BUNDLE --policy spac --fast-budget 17% --profile BUNDLE/target/device-profile.json

`--provider nnapi|xnnpack|qnn|coreml` picks the provider for the graphs outside the
experts; where this onnxruntime lacks it, `spac-run` says so and stops. Under an NPU
provider the router of a portable bundle stays on the CPU (NNAPI and CoreML have no TopK).

In an Android app, add `com.microsoft.onnxruntime:onnxruntime-android` (or the reduced build
above), open each `.ort` file with `OrtSession.SessionOptions` (`addNnapi()` or
`addXnnpack(...)`, CPU last), and drive them in the order the manifest's `io` section gives:
embed, then per layer the layer graph and its experts, then the head. spac-ort does not ship
a Kotlin or Java runtime: the Python runtime (`spac_ort.runtime`) is the reference for that
loop, the expert placement and the speculative decoding.
"""


def jetson_readme(m: Manifest, hw: HardwareSpec, fp16: bool) -> str:
    return f"""# Jetson deployment bundle

Model: {_model_line(m)}.
{_DEMO_NOTE}
## What is here

- `target/device-profile.json`: the balancer's cost model on a {hw.name}, estimated from
  published specifications (sources and assumptions in `spac_ort/targets/hardware.py`).
- `target/providers.json`: TensorRT (fp16, engine and timing caches under
  `/var/cache/spac-ort/trt`) and CUDA provider options. `spac-run --provider tensorrt`
  (or `cuda`) passes them to the bundle's graph sessions; applications that open the
  graphs with onnxruntime themselves can pass them too.
- `target/spac-run.sh`: `spac-run` on this bundle with the board's defaults (the graphs on
  CUDA, experts placed by spac under `SPAC_FAST_BUDGET`, default 17%). Extra arguments pass
  through.
- `target/spac-ort.service`: a systemd unit that serves the bundle with `spac-serve` on
  port 8000. Install: copy the bundle to `/opt/spac-ort/bundle`, the unit to
  `/etc/systemd/system/`, then `systemctl enable --now spac-ort`.

## Memory

Orin boards have one memory for the CPU and the GPU ({hw.memory_bytes / 2**30:.0f} GiB on
this profile's board). The fast budget is the share of the experts held in GPU
allocations; the rest sit in host memory in the same DRAM, so a copy into a slot moves
data within it. Choose `--fast-budget` so that it, the host experts and the KV cache fit
beside the system's own use. `--ram-budget` leaves the rest on NVMe, read on demand.

## Precision

{_precision_note(fp16)}
"""


def _precision_note(fp16: bool) -> str:
    if fp16:
        return ("The runtime opens the fp16 graphs under `target/fp16/` (weights and arithmetic in fp16,\n"
                "inputs and outputs fp32 but the KV cache; the greedy head stays fp32 for runs on the CPU,\n"
                "while greedy decoding on CUDA takes the fp16 head). Their tokens can\n"
                "depart from the fp32 bundle's after a while. The fp32 graphs are still here for a comparison.")
    return "The graphs are the bundle's fp32 ONNX graphs (built with `--precision fp32`)."


def launcher(hw: HardwareSpec) -> str:
    return f"""#!/bin/sh
# spac-run on this bundle with {hw.name} defaults; extra arguments pass through.
set -e
HERE="$(cd "$(dirname "$0")/.." && pwd)"
exec spac-run "$HERE" --provider cuda --fast-provider cuda --policy spac \\
    --fast-budget "${{SPAC_FAST_BUDGET:-17%}}" --profile "$HERE/target/device-profile.json" "$@"
"""


def systemd_unit() -> str:
    return """[Unit]
Description=spac-ort: a mixture-of-experts model served over HTTP
After=network.target

[Service]
Type=simple
Environment=SPAC_FAST_BUDGET=17%
ExecStart=/usr/bin/env spac-serve /opt/spac-ort/bundle --host 0.0.0.0 --port 8000 \\
    --provider cuda --fast-provider cuda --policy spac --fast-budget ${SPAC_FAST_BUDGET} \\
    --profile /opt/spac-ort/bundle/target/device-profile.json
Restart=on-failure
CacheDirectory=spac-ort

[Install]
WantedBy=multi-user.target
"""
