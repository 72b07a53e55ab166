"""Hardware of the devices we deploy to but do not own, and the `DeviceProfile` a bundle's
experts would get there. These are estimates from published specifications, not
measurements: decoding an expert reads its weights once per call, so an expert costs
about its bytes over the memory bandwidth of the tier that runs it, plus its arithmetic
per token; a copy costs its bytes over the link.

Where each number comes from (peak figures from the vendors; the share of a peak that
decoding reaches is our assumption, stated here and in docs/targets.md):

- Snapdragon 8 Gen 3 class phone. LPDDR5X at up to 4800 MHz on a 64-bit bus: 76.8 GB/s
  peak (Qualcomm, Snapdragon 8 Gen 3 Mobile Platform product brief, 2023). UFS 4.0 flash:
  up to 4.2 GB/s sequential read (Samsung UFS 4.0 announcement, May 2022). Assumed: the
  NPU/GPU reach 60% of DRAM peak, the CPU cores 35%; flash reads reach 70% of peak with
  4 MiB reads; the CPU sustains 60 GFLOP/s of fp32 GEMV/GEMM, the NPU 2 TFLOP/s of fp16.
  The fast tier is DRAM the NPU runs; the slow lane is the CPU running an expert straight
  from flash; a fetch copies an expert from flash to DRAM.
- Jetson AGX Orin 64GB. LPDDR5, 256-bit, 204.8 GB/s peak, shared by CPU and GPU; GPU of
  2048 CUDA cores and 64 Tensor Cores (NVIDIA Jetson AGX Orin Series Data Sheet, DS-10662).
  Assumed: the GPU reaches 70% of DRAM peak, the 12 Cortex-A78AE cores 30%; a copy inside
  unified memory moves 50 GB/s (a read and a write of the same DRAM); the GPU sustains
  10 TFLOP/s of fp16, the CPU 150 GFLOP/s of fp32.
- Jetson Orin NX 16GB: 128-bit LPDDR5, 102.4 GB/s (same data sheet family, DS-10712);
  the same shares.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..profile import DeviceProfile


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    fast_bytes_per_s: float       # the fast tier reading expert weights
    fast_flops: float
    slow_bytes_per_s: float       # the slow lane reading expert weights (DRAM, or flash on a phone)
    slow_flops: float
    link_bytes_per_s: float       # a fetch into the fast tier
    link_latency_s: float
    call_s: float                 # per expert in a call: launch and bookkeeping
    memory_bytes: int             # memory the fast budget comes out of
    notes: str

    def profile(self, expert_bytes: int, flops_per_token: float) -> DeviceProfile:
        """The cost model for experts of ``expert_bytes`` (fp32 weights as the bundle stores
        them; a quantized tier reads less) doing ``flops_per_token`` per routed token."""
        return DeviceProfile(
            f"{self.name} (estimated from specifications)",
            fast_fixed_s=self.call_s + expert_bytes / self.fast_bytes_per_s,
            fast_per_token_s=flops_per_token / self.fast_flops,
            slow_fixed_s=self.call_s + expert_bytes / self.slow_bytes_per_s,
            slow_per_token_s=flops_per_token / self.slow_flops,
            link_latency_s=self.link_latency_s,
            link_bytes_per_s=self.link_bytes_per_s)


GB = 1e9
PHONE = HardwareSpec(
    "snapdragon-8-gen-3-phone", fast_bytes_per_s=0.60 * 76.8 * GB, fast_flops=2e12,
    slow_bytes_per_s=0.70 * 4.2 * GB, slow_flops=60e9, link_bytes_per_s=0.70 * 4.2 * GB, link_latency_s=100e-6,
    call_s=20e-6, memory_bytes=12 << 30,
    notes="fast tier: DRAM run by the NPU; slow lane: the CPU reading experts from UFS 4.0 flash; "
          "fetch: flash to DRAM")
JETSON_AGX_ORIN = HardwareSpec(
    "jetson-agx-orin-64gb", fast_bytes_per_s=0.70 * 204.8 * GB, fast_flops=10e12,
    slow_bytes_per_s=0.30 * 204.8 * GB, slow_flops=150e9, link_bytes_per_s=50 * GB, link_latency_s=10e-6,
    call_s=10e-6, memory_bytes=64 << 30,
    notes="unified memory: GPU slots and the CPU's experts share one LPDDR5; fetch: a copy within it")
JETSON_ORIN_NX = HardwareSpec(
    "jetson-orin-nx-16gb", fast_bytes_per_s=0.70 * 102.4 * GB, fast_flops=5e12,
    slow_bytes_per_s=0.30 * 102.4 * GB, slow_flops=80e9, link_bytes_per_s=25 * GB, link_latency_s=10e-6,
    call_s=10e-6, memory_bytes=16 << 30,
    notes="as AGX Orin, with half the memory bus")

HARDWARE = {h.name: h for h in (PHONE, JETSON_AGX_ORIN, JETSON_ORIN_NX)}
DEFAULT_FOR_TARGET = {"android": PHONE, "jetson": JETSON_AGX_ORIN}
