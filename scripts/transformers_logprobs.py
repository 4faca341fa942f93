#!/usr/bin/env python3
"""Scores sequences with Hugging Face transformers (and PEFT for adapter directories): the
reference flow's saved models are checked against. Reads JSON from stdin,
`{"model": DIR, "adapter": DIR or null, "sequences": [{"ids": [...], "completion_start": n}]}`,
and prints `{"sums": [...]}`: each sequence's summed log-probs of its completion tokens, computed
as TRL does (float32, eager attention, one sequence at a time).

Needs torch and transformers (and peft for adapters). Used by the ignored test
`saved_models_load_in_transformers_with_the_same_log_probs` (tests/families.rs).
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main():
    request = json.load(sys.stdin)
    model = AutoModelForCausalLM.from_pretrained(
        request["model"], dtype=torch.float32, attn_implementation="eager"
    )
    if request.get("adapter"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, request["adapter"])
    model.eval()
    sums = []
    with torch.no_grad():
        for seq in request["sequences"]:
            ids = torch.tensor([seq["ids"]])
            logits = model(ids).logits[0].float()
            logps = torch.log_softmax(logits, dim=-1)
            start = seq["completion_start"]
            targets = ids[0, start:]
            picked = logps[start - 1 : -1].gather(1, targets[:, None])[:, 0]
            sums.append(picked.double().sum().item())
    json.dump({"sums": sums}, sys.stdout)


if __name__ == "__main__":
    main()
