#!/usr/bin/env bash
# The GPU check (issue 21), one run on a machine with an NVIDIA GPU, the binaries of
# scripts/gpu-check-build.sh unpacked in BIN_DIR, and python3 with torch, transformers and peft
# (no registry access needed). From the repository root:
#   scripts/gpu-check.sh BIN_DIR [LAYERS]
# e.g. on a lent machine:
#   mkdir -p /tmp/gc && tar -C /tmp/gc -xJf target/gpu-check.tar.xz && scripts/gpu-check.sh /tmp/gc
# Prints, in this order:
# 1. fidelity on CUDA f32: the model core's fidelity tests on the GPU (FLOW_TEST_DEVICE=cuda:0):
#    per-token log-probs of five families within 1e-4 of transformers, TRL's three DPO steps
#    within 1e-5, LoRA against PEFT, greedy generation;
# 2. fidelity in bf16: reference log-probs of the Mistral fixture through `flow exec
#    model.ref_logprobs`, within 1 % (relative) of transformers' f32 sums (8-bit mantissas in
#    every layer, f32 log-softmax; 0.3 % measured on the CPU);
# 3. speed at Mistral-7B's layer shapes (hidden 4096, intermediate 14336, 32 heads, 8 KV heads,
#    vocab 32000; LAYERS layers, default 32; seq 1024; bf16): flow's DPO step (LoRA r 16 on all
#    projections, gradient checkpointing) and reference scoring beside the same DPO step in
#    PyTorch + transformers + PEFT (eager attention and SDPA), tokens/s, MFU against 790 TFLOP/s
#    (H200 bf16 dense) and peak GPU memory (nvidia-smi, polled every 100 ms).
# DEVICE (default cuda:0) and TORCH_DEVICE (default cuda) let the script be tried on the CPU.
# STEPS (default "fidelity bf16 speed") picks and orders the parts; LIMIT (seconds, default 600)
# bounds each command, so one slow part cannot spend a short lease: a command stopped by it says
# so, and the benchmarks print each step's seconds as they go. A part that fails is reported,
# the others still run, and the script then exits 1.
set -euo pipefail
BIN=${1:?usage: scripts/gpu-check.sh BIN_DIR [LAYERS]}
LAYERS=${2:-32}
DEVICE=${DEVICE:-cuda:0}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
STEPS=${STEPS:-fidelity bf16 speed}
LIMIT=${LIMIT:-600}
FIXTURES=$PWD/tests/fixtures
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PEAK_TFLOPS=790
SHAPE=(--hidden 4096 --intermediate 14336 --heads 32 --kv-heads 8 --vocab 32000
  --layers "$LAYERS" --pairs 1 --seq 1024 --device "$DEVICE" --dtype bf16 --repeats 3 --json)

# NVRTC and the CUDA headers: a toolkit if there is one, else the pip wheels next to torch.
setup_cuda() {
  # The site-packages folder holding the `nvidia` wheels (/nonexistent without them).
  local site
  site=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null ||
    echo /nonexistent)
  if [[ -z ${CUDA_PATH:-} && ! -d /usr/local/cuda && ! -d /opt/cuda ]]; then
    local header
    header=$(find "$site/nvidia" -name cuda_fp16.h 2>/dev/null | head -1 || true)
    if [[ -n $header ]]; then export CUDA_PATH=$(dirname "$(dirname "$header")"); fi
  fi
  local nvrtc
  nvrtc=$(find "${CUDA_PATH:-/usr/local/cuda}" /usr/local/cuda /usr/lib/x86_64-linux-gnu "$site" \
    -name 'libnvrtc.so*' 2>/dev/null | head -1 || true)
  if [[ -n $nvrtc ]]; then
    export LD_LIBRARY_PATH=$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
  echo "CUDA_PATH=${CUDA_PATH:-(default)} NVRTC=${nvrtc:-(not found)}"
}

# Peak GPU memory of a command, MiB: nvidia-smi polled every 100 ms in the background.
with_peak_memory() {
  local log="$OUT/mem.$RANDOM"
  : >"$log"
  if command -v nvidia-smi >/dev/null; then
    (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >>"$log"; sleep 0.1; done) &
  else
    (while true; do sleep 1; done) &
  fi
  local poller=$!
  local status=0
  limited "$@" || status=$?
  kill "$poller" 2>/dev/null || true
  echo "peak_gpu_mib $(sort -n "$log" | tail -1)" >&2
  return "$status"
}

# What failed, said at the end; any makes the script exit 1 once every part has run.
FAILED=()
failed() {
  echo "$1"
  FAILED+=("$1")
}

# Runs a command for at most LIMIT seconds; says so when the limit stopped it.
limited() {
  local status=0
  timeout --kill-after=10 "$LIMIT" "$@" || status=$?
  if [[ $status == 124 || $status == 137 ]]; then echo "stopped after ${LIMIT} s: $*" >&2; fi
  return "$status"
}

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
setup_cuda

fidelity() {
echo "== 1. fidelity, $DEVICE f32 (the model core's fidelity tests on the device)"
for test in fidelity training generation; do
  local status=0
  limited env FLOW_TEST_DEVICE="$DEVICE" FLOW_FIXTURES="$FIXTURES" "$BIN/$test" on_the_test_device \
    --test-threads 1 >"$OUT/$test.log" 2>&1 || status=$?
  grep -E '^test |test result|panicked|vs |stopped after' "$OUT/$test.log" || true
  if [[ $status != 0 ]]; then failed "fidelity: $test failed (exit $status, log $OUT/$test.log)"; fi
done
}

bf16() {
echo "== 2. fidelity, $DEVICE bf16 (reference log-probs of the Mistral fixture)"
python3 - "$FIXTURES" "$OUT/pairs.jsonl" <<'EOF'
import json, sys
g = json.load(open(f"{sys.argv[1]}/mistral-tiny/golden.json"))
with open(sys.argv[2], "w") as f:
    for i, p in enumerate(g["pairs"]):
        f.write(json.dumps({"id": f"p{i}", "prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}) + "\n")
EOF
limited "$BIN/flow" exec model.ref_logprobs --input "model=$FIXTURES/mistral-tiny/base" \
  --input "dataset=$OUT/pairs.jsonl" --with "device=$DEVICE" --with dtype=bf16 --out "$OUT/ref-bf16" >/dev/null ||
  { failed "bf16: flow exec failed"; return 0; }
python3 - "$FIXTURES" "$OUT/ref-bf16/logprobs/logprobs.jsonl" <<'EOF' || failed "bf16: outside the tolerance"
import json, sys
g = json.load(open(f"{sys.argv[1]}/mistral-tiny/golden.json"))
rows = [json.loads(l) for l in open(sys.argv[2])]
worst = max(abs(r[a] - p[b]) / abs(p[b]) for r, p in zip(rows, g["pairs"])
            for a, b in [("chosen_logps", "ref_chosen_logps"), ("rejected_logps", "ref_rejected_logps")])
print(f"bf16: largest relative difference of a summed log-prob {worst:.2e} (tolerance 1e-2) {'ok' if worst < 1e-2 else 'FAIL'}")
sys.exit(0 if worst < 1e-2 else 1)
EOF
}

speed() {
echo "== 3. speed at 7B layer shapes ($LAYERS layers, seq 1024, bf16)"
for attn in eager sdpa; do
  limited python3 scripts/bench_pytorch_dpo_step.py --device "$TORCH_DEVICE" --dtype bf16 --attn "$attn" \
    --hidden 4096 --intermediate 14336 --heads 32 --kv-heads 8 --vocab 32000 --layers "$LAYERS" \
    --pairs 1 --seq 1024 --lora-r 16 --gradient-checkpointing --repeats 3 \
    >"$OUT/torch-$attn.json" || failed "PyTorch ($attn) failed"
done
with_peak_memory "$BIN/flow" bench dpo-step "${SHAPE[@]}" --lora-r 16 --gradient-checkpointing \
  >"$OUT/flow-step.json" 2>"$OUT/flow-step.mem" || failed "flow dpo-step failed"
with_peak_memory "$BIN/flow" bench logprobs "${SHAPE[@]}" >"$OUT/flow-logprobs.json" \
  2>"$OUT/flow-logprobs.mem" || failed "flow logprobs failed"
cat "$OUT/flow-step.mem" "$OUT/flow-logprobs.mem"

python3 - "$OUT" "$LAYERS" "$PEAK_TFLOPS" <<'EOF'
import json, os, sys
out, layers, peak = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
h, i, kv, v, seq = 4096, 14336, 1024, 32000, 1024
n = layers * (2 * h * h + 2 * h * kv + 3 * h * i) + h * v   # weights in the matrix products
attn = layers * 2 * seq * h                                  # q·kᵀ and p·v per token (causal: half)
# FLOPs per token of a LoRA DPO step without precomputed references: reference forward 2N,
# policy forward 2N, backward to the activations 2N (adapter weight gradients are tiny); the
# forward recomputed by gradient checkpointing is not counted (MFU's convention). Scoring: 2N.
step, score = 6 * n + 3 * attn, 2 * n + attn
def peak_mib(name):
    try:
        return float(open(f"{out}/{name}.mem").read().split()[-1])
    except (OSError, ValueError, IndexError):
        return float("nan")
rows = [("flow dpo-step", "flow-step", step), ("torch+peft eager", "torch-eager", step),
        ("torch+peft sdpa", "torch-sdpa", step), ("flow logprobs", "flow-logprobs", score)]
print(f"{'':18} {'tokens/s':>10} {'MFU':>7} {'peak GPU MiB':>13}")
for label, name, flops in rows:
    path = f"{out}/{name}.json"
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        print(f"{label:18} {'failed':>10}")
        continue
    d = json.load(open(path))
    memory = d.get("peak_gpu_mib", peak_mib(name))
    print(f"{label:18} {d['tokens_per_s']:10.0f} {100 * d['tokens_per_s'] * flops / (peak * 1e12):6.1f}% {memory:13.0f}")
EOF
}

for step in $STEPS; do
  case $step in
    fidelity | bf16 | speed) "$step" ;;
    *) echo "unknown step \`$step\` in STEPS: expected fidelity, bf16 or speed" >&2; exit 2 ;;
  esac
done
echo "outputs in $OUT"
if ((${#FAILED[@]})); then
  printf 'failed: %s\n' "${FAILED[@]}" >&2
  exit 1
fi
