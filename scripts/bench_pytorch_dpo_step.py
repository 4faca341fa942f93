#!/usr/bin/env python3
"""The baseline of `flow bench dpo-step`: the same DPO step in PyTorch + transformers (+ PEFT for
LoRA), on the same shape, so the two can be run alternately in the same minutes.

A random MistralForCausalLM (eager attention, float32 on the CPU by default; `--device cuda
--dtype bf16` on a GPU, as scripts/gpu-check.sh runs it), `pairs` fresh random pairs of `seq` tokens
per step (prompt = first quarter), sigmoid DPO loss with β 0.1 as TRL computes it (summed
completion log-probs), the reference scored without gradients (with LoRA: the base with adapters
disabled, as TRL does for a new adapter), gradient clipping at 1.0 and AdamW. Prints
`{"tokens_per_s", "step_s", "peak_rss_mib", "threads"}` like flow (tokens = all positions of all
sequences), and `peak_gpu_mib` (torch's peak allocation) on a GPU.

    python scripts/bench_pytorch_dpo_step.py --lora-r 16 [--gradient-checkpointing]
"""
import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
from transformers import MistralConfig, MistralForCausalLM


def main():
    ap = argparse.ArgumentParser()
    for name, default in [("hidden", 512), ("intermediate", 1408), ("layers", 4), ("heads", 8),
                          ("kv-heads", 2), ("vocab", 32000), ("pairs", 4), ("seq", 256),
                          ("threads", 2), ("repeats", 3), ("lora-r", 0)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"], help="weights and activations")
    ap.add_argument("--attn", default="eager", help="attention implementation: eager (the faster one on this CPU, the default) or sdpa")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                           num_hidden_layers=a.layers, num_attention_heads=a.heads,
                           num_key_value_heads=a.kv_heads, head_dim=a.hidden // a.heads,
                           sliding_window=4096, max_position_embeddings=32768, rms_norm_eps=1e-5)
    config._attn_implementation = a.attn
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    model = MistralForCausalLM(config).to(a.device, dtype)
    reference = None
    if a.lora_r:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(
            r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    else:
        reference = MistralForCausalLM(config).to(a.device, dtype).eval()
        reference.load_state_dict(model.state_dict())
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if a.lora_r:
            model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    prompt = max(a.seq // 4, 1)

    def logps(m, ids):
        logits = m(input_ids=ids).logits[:, :-1].float()
        picked = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None])[..., 0]
        return picked[:, prompt - 1:].sum(-1)

    def step():
        ids = torch.randint(0, a.vocab, (2 * a.pairs, a.seq), device=a.device)
        ids[a.pairs:, :prompt] = ids[:a.pairs, :prompt]
        with torch.no_grad():
            if a.lora_r:
                with model.disable_adapter():
                    ref = logps(model, ids)
            else:
                ref = logps(reference, ids)
        pol = logps(model, ids)
        delta = (pol[:a.pairs] - pol[a.pairs:]) - (ref[:a.pairs] - ref[a.pairs:])
        loss = -F.logsigmoid(0.1 * delta).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    gpu = a.device.startswith("cuda")
    step()
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(a.repeats):
        step()
    if gpu:
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / a.repeats
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"tokens_per_s": 2 * a.pairs * a.seq / step_s, "step_s": step_s,
              "peak_rss_mib": rss, "threads": a.threads}
    if gpu:
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


if __name__ == "__main__":
    main()
