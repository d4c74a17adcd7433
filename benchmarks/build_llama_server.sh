#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (the continuous-batching peer of benchmarks/engine.py and serve.py),
# plus `llama-quantize`, `llama-perplexity` and `llama-bench` (the peers of benchmarks/quant.py), from the
# llama.cpp sources vendored in the llama-cpp-python sdist on PyPI, and cache the binaries next to each other.
# Prints the server binary's path. Usage: benchmarks/build_llama_server.sh [llama-cpp-python version]
set -euo pipefail
version="${1:-0.3.36}"
cache="${LLMKIT_CACHE:-$HOME/.cache/llmkit}/llama-server/$version"
binary="$cache/llama-server"
if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi
work="$cache/work"  # kept until the build succeeds, so an interrupted build resumes
mkdir -p "$work"
if [ ! -d "$work/llama_cpp_python-$version" ]; then
    python3 -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
        "llama-cpp-python==$version" -d "$work" >&2
    tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
fi
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
# CPU build for this machine (native SIMD, OpenMP); no curl: the server only loads local files
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$work/build" --target llama-server llama-quantize llama-perplexity llama-bench -j "$(nproc)" >&2
for tool in llama-server llama-quantize llama-perplexity llama-bench; do cp "$work/build/bin/$tool" "$cache/"; done
rm -rf "$work"
echo "$binary"
