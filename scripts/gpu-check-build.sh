#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs on a GPU machine that reaches no registry, here (x86-64,
# no GPU, no network needed): the release `flow` binary with the `cuda` feature and the model
# core's fidelity test binaries (fidelity, training, generation), stripped and packed into one
# archive small enough to carry:
#   scripts/gpu-check-build.sh [ARCHIVE]      default target/gpu-check.tar.xz
# CUDARC_CUDA_VERSION (default 13000: driver 580 / CUDA 13.0) is the target driver's CUDA version.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHIVE=${1:-target/gpu-check.tar.xz}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
STAGE=target/gpu-check
rm -rf "$STAGE" && mkdir -p "$STAGE"

cargo build --release --features cuda
cp target/release/flow "$STAGE/flow"
# The test binaries' paths, from cargo's JSON messages.
cargo test --release --features cuda -p flow-model --test fidelity --test training \
  --test generation --no-run --message-format=json |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name path; do cp "$path" "$STAGE/$name"; done
strip "$STAGE"/*
tar -C "$STAGE" -cJf "$ARCHIVE" .
ls -la "$STAGE" "$ARCHIVE"
