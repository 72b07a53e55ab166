#!/usr/bin/env bash
# Build llama.cpp (CPU only, Release, -DGGML_NATIVE=ON) from the llama.cpp sources vendored in
# the llama-cpp-python sdist, and convert the reference model (target and draft) to f32 GGUF,
# for benchmarks/peers.py.
#
#   benchmarks/build_llama_cpp.sh [BUILD_DIR]       # default: ../peers-build next to the repo
#
# Environment: LLAMA_CPP_PYTHON_VERSION (sdist version, default 0.3.36), PYTHON (the
# interpreter that runs pip and the converter, default .venv/bin/python), SPAC_REFMODEL
# (reference model directory, default ../shared/refmodel), JOBS (default 2).
#
# Every step is skipped when its output exists, so running it again only finishes what is
# missing. Layout of BUILD_DIR:
#   llama_cpp_python-VERSION/vendor/llama.cpp   sources (kept inside the sdist: its git metadata
#                                               names the llama.cpp commit)
#   build/bin/                                  llama-bench, llama-completion, llama-speculative, ...
#   pydeps/                                     sentencepiece for the converter (the venv stays as it is)
#   models/{target,draft}-f32.gguf              the converted reference model
#   VERSION                                     sdist version and llama.cpp commit
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$(realpath -m "${1:-$ROOT/../peers-build}")
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
REFMODEL=${SPAC_REFMODEL:-$ROOT/../shared/refmodel}
JOBS=${JOBS:-2}
SDIST=$BUILD/llama_cpp_python-$VERSION
SRC=$SDIST/vendor/llama.cpp
TARGETS=(llama-bench llama-completion llama-speculative llama-speculative-simple)

log() { echo "[build_llama_cpp] $*"; }

fetch_sources() {
    if [[ -f $SRC/convert_hf_to_gguf.py ]]; then
        log "sources present: $SRC"
        return
    fi
    log "downloading the llama-cpp-python $VERSION sdist"
    mkdir -p "$BUILD"
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$BUILD"
    tar -xzf "$BUILD/llama_cpp_python-$VERSION.tar.gz" -C "$BUILD"
}

write_version() {
    local commit
    commit=$(git -C "$SRC" rev-parse HEAD 2>/dev/null || echo unknown)
    printf 'llama-cpp-python %s\nllama.cpp %s\n' "$VERSION" "$commit" > "$BUILD/VERSION"
    log "llama.cpp commit $commit (llama-cpp-python $VERSION)"
}

compile() {
    if [[ ! -f $BUILD/build/CMakeCache.txt ]]; then
        # no server (its web UI is fetched from the network), no tests, no HTTPS: CPU binaries only
        cmake -S "$SRC" -B "$BUILD/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
            -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_OPENSSL=OFF
    fi
    local start=$SECONDS
    cmake --build "$BUILD/build" --config Release -j "$JOBS" --target "${TARGETS[@]}"
    log "build step took $((SECONDS - start)) s"
}

converter_deps() {
    # Qwen2Model.set_vocab imports sentencepiece before it looks for tokenizer.model, and only a
    # missing file (not a missing module) sends it on to the tokenizer.json path it needs here
    if [[ ! -d $BUILD/pydeps/sentencepiece ]]; then
        "$PYTHON" -m pip install --quiet --target "$BUILD/pydeps" "sentencepiece==0.2.1"
    fi
}

convert() {
    local name=$1 out=$BUILD/models/$1-f32.gguf
    if [[ -f $out ]]; then
        log "model present: $out"
        return
    fi
    mkdir -p "$BUILD/models"
    # The converter names a BPE pre-tokenizer by hashing the ids it gives a probe text, and
    # refuses hashes it does not list ("BPE pre-tokenizer was not recognized"); a custom
    # vocabulary never matches. The reference tokenizer is byte-level BPE with the GPT-2 split
    # regex (tokenizer.json: pre_tokenizer ByteLevel, use_regex true, no normalizer), which
    # llama.cpp calls "gpt-2": run the converter with that answer in place of the hash lookup.
    PYTHONPATH=$BUILD/pydeps "$PYTHON" - "$SRC" "$REFMODEL/$name" --outtype f32 --outfile "$out" <<'PY'
import runpy
import sys

src = sys.argv.pop(1)
sys.path[:0] = [src, f"{src}/gguf-py"]
from conversion.base import TextModel

TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv[0] = f"{src}/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
PY
}

fetch_sources
write_version
compile
converter_deps
convert target
convert draft
log "done: binaries in $BUILD/build/bin, models in $BUILD/models"
