"""ONNX Runtime's GroupQueryAttention alone on an accelerator: one fp16 node, timed per call
for the ways its inputs can be bound (on the device, or host buffers copied in at each
call), for rotary tables of the model's full length or trimmed, for a KV cache shared in
place or not, and with flash attention turned off. The demo model's shapes and Qwen3-30B-A3B's.

    python -m benchmarks.attention_check --out attention_check.json \
        [--bundle fp32=demo-bundle --bundle fp16=demo-jetson] [--first-calls]

Each variant runs in its own process (ONNX Runtime reads its attention options once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPES = {"demo": (4, 2, 48), "qwen3-30b-a3b": (32, 4, 128)}      # heads, KV heads, head dim
VARIANTS = {
    # name: (inputs on the device, rotary table rows, tables cast in the graph, cache shared, env)
    "device": (True, 2048, False, True, {}),
    "device_table40960": (True, 40960, False, True, {}),
    "host": (False, 2048, False, True, {}),
    "host_table40960": (False, 40960, False, True, {}),
    "host_cast_tables": (False, 2048, True, True, {}),
    "host_cast_table40960": (False, 40960, True, True, {}),
    "device_not_shared": (True, 2048, False, False, {}),
    "device_no_flash": (True, 2048, False, True, {"ORT_DISABLE_FLASH_ATTENTION": "1"}),
}
CAPACITY, PAST = 512, 100
LAYER_BINDINGS = ("host", "device", "host_shared_pool")


def gqa_model(heads: int, kv: int, hd: int, cast_tables: bool):  # type: ignore[no-untyped-def]
    from onnx import TensorProto as TP
    from onnx import helper
    f16, table_type = TP.FLOAT16, (TP.FLOAT if cast_tables else TP.FLOAT16)
    nodes = []
    cos, sin = "cos_cache", "sin_cache"
    if cast_tables:
        nodes += [helper.make_node("Cast", ["cos_cache"], ["cos16"], to=f16),
                  helper.make_node("Cast", ["sin_cache"], ["sin16"], to=f16)]
        cos, sin = "cos16", "sin16"
    nodes.append(helper.make_node("GroupQueryAttention", ["q", "k", "v", "past_key", "past_value", "seqlens_k",
                                                          "total_sequence_length", cos, sin],
                                  ["out", "present_key", "present_value"], domain="com.microsoft",
                                  num_heads=heads, kv_num_heads=kv, do_rotary=1))
    cache = [1, kv, "C", hd]
    inputs = [helper.make_tensor_value_info("q", f16, [1, "T", heads * hd]),
              helper.make_tensor_value_info("k", f16, [1, "T", kv * hd]),
              helper.make_tensor_value_info("v", f16, [1, "T", kv * hd]),
              helper.make_tensor_value_info("past_key", f16, cache),
              helper.make_tensor_value_info("past_value", f16, cache),
              helper.make_tensor_value_info("seqlens_k", TP.INT32, [1]),
              helper.make_tensor_value_info("total_sequence_length", TP.INT32, []),
              helper.make_tensor_value_info("cos_cache", table_type, ["P", hd // 2]),
              helper.make_tensor_value_info("sin_cache", table_type, ["P", hd // 2])]
    outputs = [helper.make_tensor_value_info("out", f16, [1, "T", heads * hd]),
               helper.make_tensor_value_info("present_key", f16, cache),
               helper.make_tensor_value_info("present_value", f16, cache)]
    graph = helper.make_graph(nodes, "gqa", inputs, outputs)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17),
                                                                helper.make_opsetid("com.microsoft", 1)])


class Timed:
    """One session's calls through a reused IO binding, bound again before every call as the
    runtime does for a session off the host. ``host``: input name -> array for a window of
    T tokens (``make(t)``); the names in ``device`` are placed on the GPU once instead.
    The KV cache (``cache``: name -> device OrtValue) is updated in place; other outputs
    are read back to the host, which waits for the call."""

    def __init__(self, session, make, device: frozenset, cache: dict, shared: bool = True):
        import onnxruntime as ort
        self.ort, self.session, self.make, self.device, self.cache, self.shared = ort, session, make, device, cache, shared

    def binding(self, t: int):  # type: ignore[no-untyped-def]
        ort = self.ort
        arrays = self.make(t)
        values = {n: (ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0) if n in self.device
                      else ort.OrtValue.ortvalue_from_numpy(a)) for n, a in arrays.items()}
        b = self.session.io_binding()

        def bind() -> None:
            for n, v in values.items():
                b.bind_ortvalue_input(n, v)
            for n, v in self.cache.items():
                b.bind_ortvalue_input(n, v)
                present = n.replace("past", "present")
                (b.bind_ortvalue_output(present, v) if self.shared else b.bind_output(present, "cuda"))
            for o in self.session.get_outputs():
                if not o.name.startswith("present"):
                    b.bind_output(o.name, "cpu")
        return arrays, bind, b

    def steady(self, t: int, length: int, calls: int) -> dict:
        """Median ms per call of a T-token window ending at ``length``, after 5 warm calls."""
        arrays, bind, b = self.binding(t)
        arrays["seqlens_k"][:] = length - 1
        arrays["total_sequence_length"][()] = length
        times = []
        for i in range(calls + 5):
            t0 = time.perf_counter()
            bind()
            self.session.run_with_iobinding(b)
            if i >= 5:
                times.append(time.perf_counter() - t0)
        return {"median_ms": round(statistics.median(times) * 1e3, 4)}

    def new_shapes(self, length: int, widths: range) -> dict:
        """The first and second call of each window width not run before (ms): what a
        decoding run pays when a draft length it has not used comes up."""
        out = {}
        for t in widths:
            arrays, bind, b = self.binding(t)
            arrays["seqlens_k"][:] = length + t - 1
            arrays["total_sequence_length"][()] = length + t
            ms = []
            for _ in range(2):
                t0 = time.perf_counter()
                bind()
                self.session.run_with_iobinding(b)
                ms.append(round((time.perf_counter() - t0) * 1e3, 3))
            out[f"T{t}"] = ms
        return out

    def sweep(self, start: int, calls: int) -> dict:
        """Decoding one token per call from ``start`` positions on: each total length is new
        (ONNX Runtime picks its attention kernel by length), as in a real run."""
        arrays, bind, b = self.binding(1)
        times = []
        for length in range(start, start + calls):
            arrays["seqlens_k"][:] = length - 1
            arrays["total_sequence_length"][()] = length
            t0 = time.perf_counter()
            bind()
            self.session.run_with_iobinding(b)
            times.append(time.perf_counter() - t0)
        ms = [x * 1e3 for x in times]
        return {"first_ms": round(ms[0], 3), "median_ms": round(statistics.median(ms), 4),
                "max_ms": round(max(ms), 3), "total_ms": round(sum(ms), 2),
                "calls_over_1ms": sum(x > 1.0 for x in ms)}


def _tables(rows: int, hd: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    angles = np.arange(rows, dtype=np.float32)[:, None] * (10000.0 ** (-np.arange(0, hd, 2) / hd))[None, :]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def _cache(ort, kv: int, hd: int, dtype, positions: int = CAPACITY) -> dict:  # type: ignore[no-untyped-def]
    return {n: ort.OrtValue.ortvalue_from_numpy(np.zeros((1, kv, positions, hd), dtype), "cuda", 0)
            for n in ("past_key", "past_value")}


def _run(timed: Timed, calls: int) -> dict:
    out = {"sweep_T1": timed.sweep(16, calls), "first_calls_ms": timed.new_shapes(PAST, range(2, 9))}
    for t in (1, 5):
        out[f"T{t}"] = timed.steady(t, PAST + t, calls)
    return out


def _node_inputs(heads: int, kv: int, hd: int, cos: np.ndarray, sin: np.ndarray):  # type: ignore[no-untyped-def]
    """The node's inputs for a window of T tokens (random q, k, v; the lengths set per call)."""
    rng = np.random.default_rng(0)

    def make(t: int) -> dict:
        return {"q": rng.standard_normal((1, t, heads * hd)).astype(np.float16),
                "k": rng.standard_normal((1, t, kv * hd)).astype(np.float16),
                "v": rng.standard_normal((1, t, kv * hd)).astype(np.float16),
                "seqlens_k": np.zeros(1, np.int32), "total_sequence_length": np.zeros((), np.int32),
                "cos_cache": cos, "sin_cache": sin}
    return make


def measure(shape: str, variant: str, calls: int) -> dict:
    import onnxruntime as ort
    heads, kv, hd = SHAPES[shape]
    on_device, rows, cast_tables, shared, _ = VARIANTS[variant]
    session = ort.InferenceSession(gqa_model(heads, kv, hd, cast_tables).SerializeToString(),
                                   providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    cos, sin = _tables(rows, hd, np.float32 if cast_tables else np.float16)

    make = _node_inputs(heads, kv, hd, cos, sin)
    device = frozenset({"q", "k", "v", "cos_cache", "sin_cache"} if on_device else ())   # lengths: per call
    return _run(Timed(session, make, device, _cache(ort, kv, hd, np.float16), shared), calls)


def first_calls() -> dict:
    """Whether a new width's first-call cost belongs to the session, the process or the KV
    cache's length: two sessions of the fp16 node (Qwen3-30B-A3B's shapes), widths 1-4; then
    one session over new caches of 512, 512, 300, 1024, 512 and 300 positions, widths 1-3."""
    import onnxruntime as ort
    heads, kv, hd = SHAPES["qwen3-30b-a3b"]
    cos, sin = _tables(4096, hd, np.float16)

    make = _node_inputs(heads, kv, hd, cos, sin)
    model = gqa_model(heads, kv, hd, False).SerializeToString()
    device = frozenset({"q", "k", "v", "cos_cache", "sin_cache"})

    def session():  # type: ignore[no-untyped-def]
        return ort.InferenceSession(model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])

    def cache(positions: int) -> dict:
        return _cache(ort, kv, hd, np.float16, positions)
    a, b = Timed(session(), make, device, cache(CAPACITY)), Timed(session(), make, device, cache(CAPACITY))
    per_session = {"A": a.new_shapes(PAST, range(1, 5)), "B": b.new_shapes(PAST, range(1, 5)),
                   "A_again": a.new_shapes(PAST + 20, range(1, 5))}
    one = session()
    per_length = [[n, Timed(one, make, device, cache(n)).new_shapes(PAST, range(1, 4))]
                  for n in (512, 512, 300, 1024, 512, 300)]
    return {"per_session": per_session, "per_cache_length": per_length}


def measure_layer(bundle: str, where: str, calls: int) -> dict:
    """A bundle's first layer graph (fused: attention + router) on CUDA, its inputs bound from
    host buffers at each call as the runtime does, or its tables and lengths on the device."""
    import onnxruntime as ort
    from spac_ort.manifest import load_manifest
    from spac_ort.runtime.sessions import session_options
    bundle, _, graph = bundle.partition(":")
    m = load_manifest(bundle)
    d = m.dims
    so = session_options(8) if where.endswith("shared_pool") else ort.SessionOptions()
    session = ort.InferenceSession(graph or str(Path(bundle, "layers", "000", "layer.onnx")), so,
                                   providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    kinds = {i.name: i.type for i in session.get_inputs()}
    kv_type = np.float16 if kinds["past_key"] == "tensor(float16)" else np.float32
    cos, sin = _tables(d.max_positions, d.head_dim, np.float32)
    rng = np.random.default_rng(0)

    def make(t: int) -> dict:
        x = {n: (rng.standard_normal((1, t, d.hidden_size)) * 0.1).astype(np.float32) for n in ("hidden", "ffn_in")}
        return {**x, "seqlens_k": np.zeros(1, np.int32), "total_sequence_length": np.zeros((), np.int32),
                "cos_cache": cos, "sin_cache": sin}
    device = frozenset({"cos_cache", "sin_cache"} if where.startswith("device") else ())
    cache = _cache(ort, d.cache_heads, d.cache_key_dim, kv_type)
    return _run(Timed(session, make, device, cache), calls)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--bundle", action="append", default=[], metavar="NAME=PATH",
                   help="also time this bundle's first layer graph, or the graph at PATH:GRAPH with the "
                        "bundle's dimensions (repeatable)")
    p.add_argument("--first-calls", action="store_true",
                   help="also time first calls per session and per KV cache length")
    p.add_argument("--one", nargs=2, metavar=("SHAPE", "VARIANT"), help=argparse.SUPPRESS)
    p.add_argument("--layer", nargs=2, metavar=("BUNDLE", "WHERE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one or args.layer:
        print(json.dumps(measure(*args.one, args.calls) if args.one else measure_layer(*args.layer, args.calls)))
        return
    report: dict = {"capacity": CAPACITY, "past": PAST, "calls": args.calls, "results": {}}
    jobs = [(f"{shape}/{variant}", ["--one", shape, variant], env)
            for shape in SHAPES for variant, (*_, env) in VARIANTS.items()]
    for spec in args.bundle:
        name, _, path = spec.partition("=")
        jobs += [(f"layer:{name}/{where}", ["--layer", path, where], {}) for where in LAYER_BINDINGS]
    for key, argv, env in jobs:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.attention_check", "--out", "-", "--calls",
                               str(args.calls), *argv], capture_output=True, text=True, env={**os.environ, **env})
        row = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
               else {"error": proc.stderr.strip().splitlines()[-1:]})
        report["results"][key] = row
        print(f"{key:40s} {row}", flush=True)
    if args.first_calls:
        proc = subprocess.run([sys.executable, "-c", "import json, benchmarks.attention_check as a; "
                               "print(json.dumps(a.first_calls()))"], capture_output=True, text=True)
        report["first_calls"] = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                                 else {"error": proc.stderr.strip().splitlines()[-1:]})
        print(f"first calls: {report['first_calls']}", flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
