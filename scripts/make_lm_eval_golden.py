#!/usr/bin/env python3
"""Makes tests/fixtures/lm-eval/golden.json: lm-evaluation-harness's own numbers for the task
files in tests/fixtures/lm-eval/, on the tiny Mistral fixture, for flow's parity test
(tests/lm_eval_parity.rs). Run once; CI needs no Python.

    pip install lm_eval==0.4.13 torch transformers
    python scripts/make_lm_eval_golden.py

What it runs: `HFLM(pretrained=tests/fixtures/mistral-tiny/base, dtype=float32, device=cpu,
batch_size=1)` (as `lm_eval --model hf`), offline, on
- `quiz` (plain rows, prompt "Frage: {{question}}\\nAntwort:", 2 random shots from quiz_train),
- `quiz_self` (the same rows as a validation-only task: shots drawn from the questions
  themselves, each kept out of its own shots),
- the harness's German tasks `arc_de`, `hellaswag_de`, `m_mmlu_de`, `truthfulqa_de_mc1`,
  `truthfulqa_de_mc2`, `belebele_deu_Latn`, and `arc_challenge`, `hellaswag`, an MMLU subject,
  `truthfulqa_mc1`/`mc2` (the formats of translated sets such as LeoLM's) through their
  installed YAMLs (`include:`), only the dataset pointed at German rows in those formats.

For every request the golden keeps the context and continuation strings, the token ids of
`_encode_pair`, and the log-likelihood; for every task the harness's metrics.
"""
import json
import os
import tempfile
from pathlib import Path

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import lm_eval  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests/fixtures/lm-eval"
MODEL = ROOT / "tests/fixtures/mistral-tiny/base"
TASKS = Path(lm_eval.__file__).parent / "tasks"
METRICS = """metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}
  - {metric: acc_bytes, aggregation: mean, higher_is_better: true}
"""
QUIZ = """output_type: multiple_choice
dataset_path: json
dataset_name: null
doc_to_text: "Frage: {{question}}\\nAntwort:"
doc_to_choice: choices
doc_to_target: answer
""" + METRICS


def local(include, task, files, extra=""):
    """A task YAML that includes an installed one and reads local files."""
    data_files = "".join(f"    {split}: {DATA / name}\n" for split, name in files.items())
    return (f"include: {TASKS / include}\ntask: {task}\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n{data_files}{extra}")


# name -> (YAML, num_fewshot, flow's task spec)
RUNS = {
    "quiz": (
        "task: quiz\ndataset_kwargs:\n  data_files:\n"
        f"    train: {DATA / 'quiz_train.jsonl'}\n    test: {DATA / 'quiz_test.jsonl'}\n"
        "training_split: train\ntest_split: test\n" + QUIZ,
        2,
        {"path": "quiz_test.jsonl", "fewshot_path": "quiz_train.jsonl",
         "prompt": "Frage: {{question}}\nAntwort:", "metrics": ["acc", "acc_norm", "acc_bytes"]},
    ),
    "quiz_self": (
        "task: quiz_self\ndataset_kwargs:\n  data_files:\n"
        f"    val: {DATA / 'quiz_test.jsonl'}\n"
        "validation_split: val\n" + QUIZ,
        2,
        {"path": "quiz_test.jsonl", "prompt": "Frage: {{question}}\nAntwort:",
         "metrics": ["acc", "acc_norm", "acc_bytes"]},
    ),
    "arc_de": (
        local("okapi/arc_multilingual/_arc_yaml", "arc_de",
              {"train": "arc_train.jsonl", "test": "arc_test.jsonl"},
              "training_split: train\nvalidation_split: null\ntest_split: test\n"),
        2,
        {"path": "arc_test.jsonl", "preset": "arc_de", "fewshot_path": "arc_train.jsonl"},
    ),
    "hellaswag_de": (
        local("okapi/hellaswag_multilingual/_hellaswag_yaml", "hellaswag_de",
              {"val": "hs_val.jsonl"}, "training_split: null\nvalidation_split: val\n"),
        2,
        {"path": "hs_val.jsonl", "preset": "hellaswag_de"},
    ),
    "m_mmlu_de": (
        local("okapi/mmlu_multilingual/_default_yaml", "m_mmlu_de",
              {"train": "mmlu_train.jsonl", "test": "mmlu_test.jsonl"}),
        2,
        {"path": "mmlu_test.jsonl", "preset": "m_mmlu_de", "fewshot_path": "mmlu_train.jsonl"},
    ),
    "truthfulqa_de_mc1": (
        local("okapi/truthfulqa_multilingual/_truthfulqa_mc1_yaml", "truthfulqa_de_mc1",
              {"val": "tqa_val.jsonl"}, "validation_split: val\n"),
        0,
        {"path": "tqa_val.jsonl", "preset": "truthfulqa_de_mc1"},
    ),
    "truthfulqa_de_mc2": (
        local("okapi/truthfulqa_multilingual/_truthfulqa_mc2_yaml", "truthfulqa_de_mc2",
              {"val": "tqa_val.jsonl"}, "validation_split: val\n"),
        0,
        {"path": "tqa_val.jsonl", "preset": "truthfulqa_de_mc2"},
    ),
    "belebele_deu_Latn": (
        local("belebele/_default_template_yaml", "belebele_deu_Latn",
              {"test": "bb_test.jsonl"}, "fewshot_split: test\ntest_split: test\n"),
        2,
        {"path": "bb_test.jsonl", "preset": "belebele_deu_Latn"},
    ),
    "arc_challenge": (
        local("arc/arc_challenge.yaml", "arc_challenge",
              {"train": "arc_en_train.jsonl", "test": "arc_en_test.jsonl"},
              "training_split: train\nvalidation_split: null\ntest_split: test\n"),
        2,
        {"path": "arc_en_test.jsonl", "preset": "arc", "fewshot_path": "arc_en_train.jsonl"},
    ),
    "hellaswag": (
        local("hellaswag/hellaswag.yaml", "hellaswag", {"val": "hs_en_val.jsonl"},
              "training_split: null\nvalidation_split: val\n"),
        2,
        {"path": "hs_en_val.jsonl", "preset": "hellaswag"},
    ),
    "hellaswag_train": (
        local("hellaswag/hellaswag.yaml", "hellaswag_train",
              {"train": "hs_en_train.jsonl", "val": "hs_en_val.jsonl"},
              "training_split: train\nvalidation_split: val\n"),
        2,
        {"path": "hs_en_val.jsonl", "preset": "hellaswag", "fewshot_path": "hs_en_train.jsonl"},
    ),
    "mmlu_subject_field": (
        local("mmlu/default/_default_template_yaml", "mmlu_subject_field",
              {"dev": "mmlu_en_dev.jsonl", "test": "mmlu_en_test.jsonl"},
              'fewshot_split: dev\ntest_split: test\n'
              'description: "The following are questions about {{subject}}.\\n\\n"\n'),
        1,
        {"path": "mmlu_en_test.jsonl", "preset": "mmlu", "fewshot_path": "mmlu_en_dev.jsonl",
         "description": "The following are questions about {{subject}}.\n\n"},
    ),
    "mmlu_erdkunde": (
        local("mmlu/default/_default_template_yaml", "mmlu_erdkunde",
              {"dev": "mmlu_en_dev.jsonl", "test": "mmlu_en_test.jsonl"},
              'fewshot_split: dev\ntest_split: test\n'
              'description: "The following are multiple choice questions (with answers) about erdkunde.\\n\\n"\n'),
        2,
        {"path": "mmlu_en_test.jsonl", "preset": "mmlu", "fewshot_path": "mmlu_en_dev.jsonl",
         "description": "The following are multiple choice questions (with answers) about erdkunde.\n\n"},
    ),
    "truthfulqa_mc1": (
        local("truthfulqa/truthfulqa_mc1.yaml", "truthfulqa_mc1", {"val": "tqa_en_val.jsonl"},
              "validation_split: val\n"),
        0,
        {"path": "tqa_en_val.jsonl", "preset": "truthfulqa_mc1"},
    ),
    "truthfulqa_mc2": (
        local("truthfulqa/truthfulqa_mc2.yaml", "truthfulqa_mc2", {"val": "tqa_en_val.jsonl"},
              "validation_split: val\n"),
        0,
        {"path": "tqa_en_val.jsonl", "preset": "truthfulqa_mc2"},
    ),
}

# The harness names TruthfulQA's metrics `acc`; flow names them mc1 / mc2.
RENAME = {"truthfulqa_de_mc1": {"acc": "mc1"}, "truthfulqa_de_mc2": {"acc": "mc2"},
          "truthfulqa_mc1": {"acc": "mc1"}, "truthfulqa_mc2": {"acc": "mc2"}}


def main():
    lm = HFLM(pretrained=str(MODEL), device="cpu", dtype="float32", batch_size=1)
    golden = {"lm_eval": lm_eval.__version__, "model": "mistral-tiny/base", "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (yaml, _, _) in RUNS.items():
            Path(tmp, f"{name}.yaml").write_text(yaml)
        manager = TaskManager(include_path=tmp)
        for name, (_, shots, spec) in RUNS.items():
            out = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=manager,
                                          num_fewshot=shots, log_samples=True)
            rename = RENAME.get(name, {})
            results = {}
            for key, value in out["results"][name].items():
                metric, _, filt = key.partition(",")
                if filt == "none" and not metric.endswith("_stderr"):
                    results[rename.get(metric, metric)] = value
            docs = []
            for sample in sorted(out["samples"][name], key=lambda s: s["doc_id"]):
                args = sample["arguments"]
                args = [(a["arg_0"], a["arg_1"]) for a in args.values()] if isinstance(args, dict) else args
                requests = []
                for (context, continuation), response in zip(args, sample["resps"]):
                    context_ids, continuation_ids = lm._encode_pair(context, continuation)
                    requests.append({"context": context, "continuation": continuation,
                                     "context_ids": context_ids, "continuation_ids": continuation_ids,
                                     "loglikelihood": float(response[0][0])})
                docs.append({"doc_id": sample["doc_id"], "requests": requests})
            golden["tasks"][name] = {"spec": {"num_fewshot": shots, **spec}, "results": results,
                                     "docs": docs}
            print(name, results)
    (DATA / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
