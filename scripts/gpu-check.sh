#!/usr/bin/env bash
# The GPU check of issue 9, for a machine with an NVIDIA GPU, the `flow` binary built here with
# `cargo build --release --features cuda`, and python3 with torch + transformers (no registry
# access needed). Usage:
#   scripts/gpu-check.sh [FLOW_BINARY] [FIXTURES_DIR] [LAYERS]
# defaults: target/release/flow, tests/fixtures, 8 layers of Mistral-7B's shape.
# Prints one table: fidelity on the fixtures (CUDA f32 within 1e-4 of transformers, bf16 within
# 1 % relative of a summed log-prob: 8-bit mantissas in every layer, f32 log-softmax; 0.3 % on
# the CPU), then flow's and
# PyTorch's DPO step and reference scoring at 7B layer shapes (LoRA r 16 on all projections,
# seq 1024, bf16) with tokens/s, MFU against 790 TFLOP/s bf16 and peak GPU memory.
set -euo pipefail
FLOW=${1:-target/release/flow}
FIXTURES=${2:-tests/fixtures}
LAYERS=${3:-8}
OUT=${OUT:-$(mktemp -d)}
PEAK_TFLOPS=790
SHAPE=(--hidden 4096 --intermediate 14336 --heads 32 --kv-heads 8 --vocab 32000
  --layers "$LAYERS" --pairs 1 --seq 1024 --device cuda:0 --dtype bf16 --repeats 3 --json)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# Peak GPU memory of a command: nvidia-smi polled every 100 ms in the background.
with_peak_memory() {
  local log="$OUT/mem.$RANDOM"
  (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >>"$log"; sleep 0.1; done) &
  local poller=$!
  "$@"
  kill "$poller" 2>/dev/null || true
  echo "peak_gpu_mib $(sort -n "$log" | tail -1)" >&2
}

echo "== fidelity on the fixtures"
python3 - "$FIXTURES" "$OUT/pairs.jsonl" <<'EOF'
import json, sys
g = json.load(open(f"{sys.argv[1]}/mistral-tiny/golden.json"))
with open(sys.argv[2], "w") as f:
    for i, p in enumerate(g["pairs"]):
        f.write(json.dumps({"id": f"p{i}", "prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}) + "\n")
EOF
for dtype in f32 bf16; do
  "$FLOW" exec model.ref_logprobs --input "model=$FIXTURES/mistral-tiny/base" \
    --input "dataset=$OUT/pairs.jsonl" --with device=cuda:0 --with "dtype=$dtype" --out "$OUT/ref-$dtype" >/dev/null
  python3 - "$FIXTURES" "$OUT/ref-$dtype/logprobs/logprobs.jsonl" "$dtype" <<'EOF'
import json, sys
g = json.load(open(f"{sys.argv[1]}/mistral-tiny/golden.json"))
rows = [json.loads(l) for l in open(sys.argv[2])]
# f32: absolute difference per summed log-prob; bf16: relative (8-bit mantissas compound).
relative = sys.argv[3] == "bf16"
worst = max(abs(r[a] - p[b]) / (abs(p[b]) if relative else 1.0) for r, p in zip(rows, g["pairs"])
            for a, b in [("chosen_logps", "ref_chosen_logps"), ("rejected_logps", "ref_rejected_logps")])
tolerance = {"f32": 1e-4, "bf16": 1e-2}[sys.argv[3]]
kind = "relative" if relative else "absolute"
print(f"fidelity {sys.argv[3]}: largest {kind} difference {worst:.2e} (tolerance {tolerance}) {'ok' if worst < tolerance else 'FAIL'}")
EOF
done

echo "== flow at 7B layer shapes ($LAYERS layers, LoRA r 16, seq 1024, bf16)"
with_peak_memory "$FLOW" bench dpo-step "${SHAPE[@]}" --lora-r 16 --gradient-checkpointing >"$OUT/flow-step.json"
with_peak_memory "$FLOW" bench logprobs "${SHAPE[@]}" >"$OUT/flow-logprobs.json"

echo "== PyTorch + transformers, same shapes"
python3 - "$LAYERS" >"$OUT/torch.json" <<'EOF'
import json, sys, time, torch
import torch.nn.functional as F
from transformers import MistralConfig, MistralForCausalLM
layers = int(sys.argv[1])
cfg = MistralConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                    num_hidden_layers=layers, vocab_size=32000, torch_dtype=torch.bfloat16)
torch.manual_seed(0)
model = MistralForCausalLM(cfg).to("cuda", torch.bfloat16)
ref = MistralForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
for p in model.parameters():
    p.requires_grad_(False)
adapters = []
for name, module in model.named_modules():  # LoRA r 16, alpha 32 on all seven projections, by hand
    if name.split(".")[-1] in {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}:
        a = torch.nn.Parameter(torch.randn(16, module.in_features, device="cuda") * 0.01)
        b = torch.nn.Parameter(torch.zeros(module.out_features, 16, device="cuda"))
        adapters += [a, b]
        base = module.forward
        module.forward = (lambda base, a, b: lambda x: base(x) + 2.0 * (x.float() @ a.t() @ b.t()).to(x.dtype))(base, a, b)
model.gradient_checkpointing_enable()
model.config.use_cache = False
opt = torch.optim.AdamW(adapters, lr=1e-6)
ids = torch.randint(0, 32000, (2, 1024), device="cuda")
def logps(m, ids):
    logits = m(ids).logits[:, 255:-1].float()
    return torch.gather(logits.log_softmax(-1), 2, ids[:, 256:, None]).squeeze(-1).sum(-1)
def step():
    with torch.no_grad():
        r = logps(ref, ids)
    p = logps(model, ids)
    loss = -F.logsigmoid(0.1 * ((p[0] - r[0]) - (p[1] - r[1])))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(adapters, 1.0)
    opt.step(); opt.zero_grad()
step(); torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
t = time.time()
for _ in range(3):
    step()
torch.cuda.synchronize()
s = (time.time() - t) / 3
print(json.dumps({"tokens_per_s": 2048 / s, "step_s": s, "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20}))
EOF

python3 - "$OUT" "$LAYERS" "$PEAK_TFLOPS" <<'EOF'
import json, sys
out, layers, peak = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
h, i, kv, v = 4096, 14336, 1024, 32000
per_layer = 2 * h * h + 2 * h * kv + 3 * h * i
# Training FLOPs per token: policy forward 2N, backward activations 2N (+ the recomputed forward
# with checkpointing, not counted, as MFU conventions go), reference forward 2N; LoRA weights tiny.
n = layers * per_layer + h * v
for name, flops in [("flow-step", 6 * n), ("torch", 6 * n), ("flow-logprobs", 2 * n)]:
    d = json.load(open(f"{out}/{name}.json"))
    mfu = d["tokens_per_s"] * flops / (peak * 1e12)
    print(f"{name:14} {d['tokens_per_s']:10.0f} tokens/s  MFU {100 * mfu:5.1f} %  {json.dumps(d)}")
EOF
