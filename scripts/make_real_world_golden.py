#!/usr/bin/env python3
"""Makes tests/fixtures/real-world/golden.json: the ids and log-probs that TRL 1.16's DPOTrainer
(tokenize_fn, collator and shifted completion mask, re-implemented here line for line on
transformers 5.24 since TRL's tokenization is pure Python) gives for the awkward rows of
issue #17, on the tiny fixture models. flow's tests compare with these numbers.

Run from the repository root with Python that has torch and transformers:
    python scripts/make_real_world_golden.py
"""
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

FIXTURES = Path("tests/fixtures")


def common_prefix_length(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def trl_tokenize(tok, ex):
    """TRL 1.16 `_prepare_dataset` + `tokenize_fn` for one row."""
    ex = dict(ex)
    if isinstance(ex["prompt"], list):
        kw = {"tools": None, "return_dict": True, "tokenize": True}
        p = tok.apply_chat_template(ex["prompt"], add_generation_prompt=True, **kw)["input_ids"]
        pc = tok.apply_chat_template(ex["prompt"] + ex["chosen"], **kw)["input_ids"]
        pr = tok.apply_chat_template(ex["prompt"] + ex["rejected"], **kw)["input_ids"]
    else:
        eos = tok.eos_token
        for side in ("chosen", "rejected"):
            if not ex[side].endswith(eos):
                ex[side] += eos
        p = tok(text=ex["prompt"])["input_ids"]
        pc = tok(text=ex["prompt"] + ex["chosen"])["input_ids"]
        pr = tok(text=ex["prompt"] + ex["rejected"])["input_ids"]
    n = min(common_prefix_length(p, pc), common_prefix_length(p, pr))
    return {"prompt_ids": p[:n], "chosen_ids": pc[n:], "rejected_ids": pr[n:]}


def trl_logps(model, ids, max_length=None):
    """Summed completion log-probs as TRL's collator (keep_start) and shifted mask give them."""
    out = {}
    for side in ("chosen", "rejected"):
        seq = ids["prompt_ids"] + ids[f"{side}_ids"]
        mask = [0] * len(ids["prompt_ids"]) + [1] * len(ids[f"{side}_ids"])
        if max_length is not None:
            seq, mask = seq[:max_length], mask[:max_length]
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0].float()
        logps = torch.log_softmax(logits, dim=-1)
        total = 0.0
        for t in range(1, len(seq)):
            if mask[t]:
                total += logps[t - 1, seq[t]].double().item()
        out[f"{side}_logps"] = total
        out[f"{side}_scored"] = sum(mask[1:])
    return out


def model(family):
    return AutoModelForCausalLM.from_pretrained(
        FIXTURES / family / "base", dtype=torch.float32, attn_implementation="eager"
    ).eval()


def case(name, family, row, trl_row=None, max_length=None, note=""):
    tok = AutoTokenizer.from_pretrained(FIXTURES / family / "base")
    ids = trl_tokenize(tok, trl_row or row)
    return {
        "name": name,
        "family": family,
        "row": row,
        "note": note,
        "max_length": max_length,
        **ids,
        **trl_logps(model(family), ids, max_length),
    }


def main():
    system = "Du bist ein hilfreicher Assistent."
    question = "Was ist die Hauptstadt von Deutschland?"
    long_answer = " ".join(["Berlin ist die Hauptstadt von Deutschland."] * 120)
    cases = [
        case(
            "empty_prompt_without_bos",
            "qwen2-tiny",
            {"prompt": "", "chosen": "a", "rejected": "b"},
            note="Qwen's tokenizer adds no BOS: the first completion token has nothing before it and is not scored",
        ),
        case(
            "empty_prompt_without_bos_max_length_64",
            "qwen2-tiny",
            {"prompt": "", "chosen": "a", "rejected": "b"},
            max_length=64,
            note="not dropped: the prompt does not fill max_length",
        ),
        case(
            "system_column_without_prompt",
            "llama-tiny",
            {
                "system": system,
                "chosen": [{"role": "user", "content": question}, {"role": "assistant", "content": "Berlin."}],
                "rejected": [{"role": "user", "content": question}, {"role": "assistant", "content": "Paris."}],
            },
            trl_row={
                "prompt": [{"role": "system", "content": system}, {"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": "Berlin."}],
                "rejected": [{"role": "assistant", "content": "Paris."}],
            },
            note="the system text opens the conversation (TRL needs it as a leading message)",
        ),
        case(
            "system_as_message_list",
            "llama-tiny",
            {
                "system": [{"role": "system", "content": system}],
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": "Berlin."}],
                "rejected": [{"role": "assistant", "content": "Paris."}],
            },
            trl_row={
                "prompt": [{"role": "system", "content": system}, {"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": "Berlin."}],
                "rejected": [{"role": "assistant", "content": "Paris."}],
            },
        ),
        case(
            "plain_row_with_system_and_a_model_template",
            "llama-tiny",
            {"system": system, "prompt": question, "chosen": "Berlin.", "rejected": "Paris."},
            trl_row={
                "prompt": [{"role": "system", "content": system}, {"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": "Berlin."}],
                "rejected": [{"role": "assistant", "content": "Paris."}],
            },
            note="flow's rule: a plain row's system text is rendered with the model's chat template",
        ),
        case(
            "prompt_text_starting_with_bos",
            "llama-tiny",
            {"prompt": "<|begin_of_text|>" + question, "chosen": " Berlin.", "rejected": " Paris."},
            trl_row={"prompt": question, "chosen": " Berlin.", "rejected": " Paris."},
            note="flow keeps one BOS where TRL would tokenize two",
        ),
        case(
            "completion_already_ending_with_eos",
            "mistral-tiny",
            {"prompt": question, "chosen": " Berlin.</s>", "rejected": " Paris."},
            note="TRL appends EOS only where the text does not end with it",
        ),
        case(
            "pair_longer_than_the_models_context",
            "llama-tiny",
            {"prompt": question, "chosen": " " + long_answer, "rejected": " Paris."},
            max_length=512,
            note="max_length defaults to max_position_embeddings (512): keep_start cuts the sequence",
        ),
    ]
    out = FIXTURES / "real-world"
    out.mkdir(exist_ok=True)
    (out / "golden.json").write_text(json.dumps({"cases": cases}, indent=1, ensure_ascii=False) + "\n")
    for c in cases:
        print(c["name"], len(c["prompt_ids"]), len(c["chosen_ids"]), c["chosen_logps"], c["chosen_scored"])


if __name__ == "__main__":
    main()
