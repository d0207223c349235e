"""The causal-LM task kind on a tiny random Llama (issue 49): the masked completion loss against a hand computation
from full logits, the per-example Fisher of the summed completion NLL against a per-example autograd loop, the
scores, the JSONL checks, and pm-lora end to end through the CLI with an export that plain transformers loads."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import save_tiny_llama, tiny_character_tokenizer, write_completion_tasks
from perturbmerge.adaptation import LoraAdaptation
from perturbmerge.backbones import CausalLMBackbone
from perturbmerge.cli import main
from perturbmerge.config import FisherSettings
from perturbmerge.context import TaskContext
from perturbmerge.data import Task
from perturbmerge.data.completions import (CompletionDataset, completion_ids, make_completion_collate,
                                           prompt_ids)
from perturbmerge.kinds.causal_lm import CausalLMKind, LanguageModel, chrf, exact_match, normalise_answer
from perturbmerge.methods.task_fisher import task_fisher

PAIRS = [("3", "three"), ("5", "five"), ("8", "eight"), ("12", "twelve"), ("20", "twenty")]


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=52, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False)
    return LlamaForCausalLM(config).double().eval()


def encoded(pairs=PAIRS):
    tokenizer = tiny_character_tokenizer()
    return tokenizer, [(prompt_ids(tokenizer, p), completion_ids(tokenizer, c)) for p, c in pairs]


def test_the_completion_loss_is_the_nll_of_the_completion_tokens_only():
    """Σ_j −log p(c_j | prompt, c_<j) per example from full-vocabulary logits at every position, by hand."""
    model = tiny_llama()
    tokenizer, pairs = encoded()
    inputs, _ = make_completion_collate(tokenizer.pad_token_id)([(pair, i) for i, pair in enumerate(pairs)])
    outputs = CausalLMBackbone(model)(inputs)
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.double()
    for n, (prompt, completion) in enumerate(pairs):
        by_hand = sum(-logits[n, len(prompt) + j - 1].log_softmax(-1)[token] for j, token in enumerate(completion))
        torch.testing.assert_close(outputs[n, 0], by_hand, rtol=1e-10, atol=1e-10)
        assert outputs[n, 1] == len(completion)  # prompt and padding carry no loss
    kind = CausalLMKind()
    assert torch.equal(kind.example_losses(None, outputs, None), outputs[:, 0])
    torch.testing.assert_close(kind.loss(None, outputs, None), outputs[:, 0].sum() / outputs[:, 1].sum())


def test_the_per_example_fisher_of_the_lm_loss_matches_a_per_example_autograd_loop():
    model = tiny_llama(1)
    tokenizer, pairs = encoded()
    adaptation = LoraAdaptation(rank=2, alpha=4.0, dropout=0.0, targets=["q_proj", "v_proj"])
    backbone = adaptation.attach(CausalLMBackbone(model))
    with torch.no_grad():
        for p in adaptation.trainable_parameters():
            p.normal_(0, 0.3)
    dataset = CompletionDataset([p for p, _ in pairs], [c for _, c in pairs], [c for _, c in PAIRS], "exact_match")
    task = Task(0, ["numbers"], 0, dataset, dataset)
    context = TaskContext(LanguageModel(backbone), CausalLMKind(), torch.device("cpu"), 1, task=task,
                          collate=make_completion_collate(tokenizer.pad_token_id))
    fisher = task_fisher(adaptation, context, task, FisherSettings(batch_size=2))
    weights = {k: layer.get_base_layer().weight.requires_grad_(True) for k, layer in adaptation.layers.items()}
    collate = make_completion_collate(tokenizer.pad_token_id)
    total = {k: torch.zeros_like(w) for k, w in weights.items()}
    for n, pair in enumerate(pairs):  # one example per backward pass: its summed completion NLL
        inputs, _ = collate([(pair, n)])
        loss = backbone(inputs)[0, 0]
        for k, g in zip(weights, torch.autograd.grad(loss, list(weights.values()))):
            total[k] += g.pow(2)
    assert len(fisher) == 4 and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in fisher)
    for k in total:
        torch.testing.assert_close(fisher[k], total[k] / len(pairs), rtol=1e-9, atol=1e-14)
        assert float(total[k].abs().max()) > 0


def test_scores():
    assert normalise_answer("  Twenty-One. ") == "twenty-one"
    assert exact_match("Twenty  one!", "twenty one") == 100.0 and exact_match("twenty", "twenty one") == 0.0
    assert chrf("der Hund", "der Hund") == pytest.approx(100.0)
    assert 0.0 <= chrf("die Katze", "der Hund") < 30.0


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    save_tiny_llama(folder / "model")
    tasks = {"english": [(str(n), w) for n, w in [(1, "one"), (2, "two"), (3, "three"), (4, "four"), (5, "five"),
                                                  (6, "six")]],
             "german": [(str(n), w) for n, w in [(1, "eins"), (2, "zwei"), (3, "drei"), (4, "vier"), (5, "fuenf"),
                                                 (6, "sechs")]],
             "french": [(str(n), w) for n, w in [(1, "un"), (2, "deux"), (3, "trois"), (4, "quatre"), (5, "cinq"),
                                                 (6, "six")]]}
    write_completion_tasks(folder / "tasks.jsonl", tasks, split=True)
    general = [{"task": "general", "prompt": "say", "completion": text, "split": "general"}
               for text in ("the cat sat on the mat.", "der hund schlaeft.", "le chat dort.")]
    with (folder / "tasks.jsonl").open("a") as handle:
        handle.write("\n".join(json.dumps(line) for line in general) + "\n")
    return folder


def run_lm(folder, out, method="pm-lora", *sets):
    settings = {"backbone": f"hf:{folder / 'model'}", "epochs": "3", "batch_size": "2", "lr": "0.01",
                **dict(item.split("=", 1) for item in sets)}
    if method in ("zero-shot",):
        settings = {k: v for k, v in settings.items() if k == "backbone"}
    return main(["run", "--benchmark", f"jsonl:{folder / 'tasks.jsonl'}", "--method", method, "--out", str(out),
                 "--quiet", "--set", *(f"{k}={v}" for k, v in settings.items())])


def test_pm_lora_runs_end_to_end_on_jsonl_tasks_and_exports_a_plain_transformers_model(lm_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert run_lm(lm_folder, tmp_path / "run", "pm-lora", "save_model=true") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    matrix = results["accuracy_matrix"]
    assert [sum(v is not None for v in row) for row in matrix] == [1, 2, 3]
    assert results["alphas"][0] == 1.0 and all(0.0 <= a <= 1.0 for a in results["alphas"])
    assert all(log["fisher_mass"] > 0 for log in results["task_logs"])
    assert results["scenario"] == "task-incremental"
    logs = results["task_logs"]  # general ability: the held-out "general" lines' NLL after each task, and before
    assert all(log["general_nll"] > 0 for log in logs) and len({log["general_nll_base"] for log in logs}) == 1
    assert logs[0]["general_nll"] != logs[0]["general_nll_base"]  # training moved it
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "exported")]) == 0
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "exported"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "exported"))
    assert tokenizer.chat_template and not any("lora" in n for n, _ in model.named_parameters())
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "2"}], add_generation_prompt=True,
                                        tokenize=False)
    batch = tokenizer(ids, return_tensors="pt", add_special_tokens=False)
    generated = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > batch["input_ids"].shape[1]
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "exported"), "--prompt", "2", "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("2\t")
    assert main(["generate", "--model", str(tmp_path / "exported"), "--jsonl", str(lm_folder / "tasks.jsonl")]) == 0
    scored = capsys.readouterr().out
    assert "english" in scored and "french" in scored


@pytest.mark.parametrize("lines, message", [
    (['{"task": "a", "prompt": "1", "completion": "one"}', '{"text": "x", "label": "y"}'], "mixed schemas"),
    (['{"task": "a", "prompt": "1", "completion": " "}'], "completion must be non-empty text"),
    (['{"task": "a", "prompt": "1", "completion": "one", "split": "dev"}'], "split is 'dev'"),
    (['{"task": "a", "prompt": "1", "completion": "one", "metric": "bleu"}'], "metric is 'bleu'"),
    (['{"task": "a", "prompt": "' + "9" * 80 + '", "completion": "one"}',
      '{"task": "a", "prompt": "2", "completion": "two"}'], "more than the model's context of 64"),
    (['{"task": "a", "prompt": "1", "completion": "one", "split": "train"}'], "task 'a' has no test example"),
])
def test_jsonl_errors_are_one_line(lm_folder, tmp_path, capsys, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code = main(["run", "--benchmark", f"jsonl:{path}", "--method", "seq-lora", "--out", str(tmp_path / "out"),
                 "--quiet", "--set", f"backbone=hf:{lm_folder / 'model'}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_without_a_pad_token_pads_with_eos_and_says_so(tmp_path, capsys):
    save_tiny_llama(tmp_path / "model", pad=False, chat_template=False)
    write_completion_tasks(tmp_path / "tasks.jsonl", {"a": [("1", "one"), ("2", "two"), ("3", "three")]})
    assert main(["run", "--benchmark", f"jsonl:{tmp_path / 'tasks.jsonl'}", "--method", "seq-lora", "--out",
                 str(tmp_path / "out"), "--set", f"backbone=hf:{tmp_path / 'model'}", "epochs=1",
                 "data.test_fraction=0.34"]) == 0
    assert "has no pad token; padding with its end-of-sequence token '</s>'" in capsys.readouterr().err


def test_methods_that_need_a_head_say_so_in_one_line(lm_folder, tmp_path, capsys):
    assert run_lm(lm_folder, tmp_path / "out", "frozen-lda") == 2
    err = capsys.readouterr().err
    assert "has no classes" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("method", ["seq-lora", "merge-lora", "o-lora", "task-arithmetic", "ties", "magmax",
                                    "zero-shot", "joint"])
def test_the_baselines_of_issue_49_run_on_causal_lm_tasks(lm_folder, tmp_path, method):
    assert run_lm(lm_folder, tmp_path / method, method, "epochs=1") == 0
    results = json.loads((tmp_path / method / "results.json").read_text())
    assert len(results["accuracy_matrix"]) == (1 if method == "joint" else 3)
    # every method reports the general-ability NLL, the joint reference too (its one training on all tasks)
    assert all(log["general_nll"] > 0 and log["general_nll_base"] > 0 for log in results["task_logs"])


def test_full_weight_fisher_methods_and_classification_only_methods_say_so(lm_folder, tmp_path, capsys):
    assert run_lm(lm_folder, tmp_path / "a", "pm-full") == 2
    assert "cannot trace the causal_lm kind's loss; use a LoRA method" in capsys.readouterr().err
    assert main(["run", "--benchmark", "digits", "--method", "zero-shot", "--out", str(tmp_path / "b"),
                 "--quiet"]) == 2
    assert "runs on causal_lm tasks" in capsys.readouterr().err


@pytest.mark.parametrize("benchmark", ["polyglot", "jsonl"])
def test_causal_lm_benchmarks_run_the_fisher_pass_at_their_training_batch(lm_folder, benchmark):
    """The Fisher pass holds a training step's activations at its own batch; for a causal LM they grow with
    batch × sequence length, so the generic 64 multiplied a polyglot run's peak memory (docs/performance.md)."""
    from perturbmerge.runner import resolve_config

    name = "polyglot" if benchmark == "polyglot" else f"jsonl:{lm_folder / 'tasks.jsonl'}"
    config, _ = resolve_config({"benchmark": name, "method": "pm-lora"})
    assert config.fisher.batch_size == config.batch_size < 64
    config, _ = resolve_config({"benchmark": name, "method": "pm-lora"}, sets=["fisher.batch_size=4"])
    assert config.fisher.batch_size == 4  # still the user's to set
    classification, _ = resolve_config({"benchmark": "digits", "method": "pm-lora"})
    assert classification.fisher.batch_size == 64


def test_an_lm_run_killed_after_a_checkpoint_resumes_bit_identically(lm_folder, tmp_path):
    assert run_lm(lm_folder, tmp_path / "ref", "pm-lora") == 0
    assert run_lm(lm_folder, tmp_path / "run", "pm-lora", "checkpoint.every_steps=4", "checkpoint.keep_final=true") == 0
    (tmp_path / "run" / "results.json").unlink()
    (tmp_path / "run" / "report.md").unlink()
    assert main(["run", "--resume", str(tmp_path / "run"), "--quiet", "--from-checkpoint",
                 sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*"))[0]]) == 0
    resumed = json.loads((tmp_path / "run" / "results.json").read_text())
    reference = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert resumed["accuracy_matrix"] == reference["accuracy_matrix"] and resumed["alphas"] == reference["alphas"]
    assert [log["general_nll"] for log in resumed["task_logs"]] == [log["general_nll"] for log in reference["task_logs"]]
    assert [log["general_nll_base"] for log in resumed["task_logs"]] == [
        log["general_nll_base"] for log in reference["task_logs"]]  # the pretrained model's, kept by the checkpoint


def test_the_general_nll_before_training_is_the_pretrained_models(lm_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    from perturbmerge.backbones import load_tokenizer

    assert run_lm(lm_folder, tmp_path / "run", "zero-shot") == 0
    logs = json.loads((tmp_path / "run" / "results.json").read_text())["task_logs"]
    tokenizer = load_tokenizer(f"hf:{lm_folder / 'model'}")
    model = CausalLMBackbone(AutoModelForCausalLM.from_pretrained(str(lm_folder / "model"))).eval()
    texts = ("the cat sat on the mat.", "der hund schlaeft.", "le chat dort.")
    items = [((prompt_ids(tokenizer, "say"), completion_ids(tokenizer, t)), i) for i, t in enumerate(texts)]
    with torch.no_grad():
        outputs = model(make_completion_collate(tokenizer.pad_token_id)(items)[0]).double()
    expected = float(outputs[:, 0].sum() / outputs[:, 1].sum())
    assert logs[0]["general_nll_base"] == pytest.approx(expected, rel=1e-6)
    assert all(log["general_nll"] == pytest.approx(expected, rel=1e-6) for log in logs)  # zero-shot: unchanged


def test_the_lm_report_names_scores_and_shows_general_ability_and_a_rewrite_keeps_the_command(lm_folder, tmp_path,
                                                                                              capsys):
    out = tmp_path / "run"
    assert run_lm(lm_folder, out, "seq-lora", "epochs=1") == 0
    first = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    logs, matrix = results["task_logs"], results["accuracy_matrix"]
    printed = capsys.readouterr().out.splitlines()
    assert any(line.startswith("  final score ") for line in printed) and not any("final acc" in l for l in printed)
    header = printed.index("  score matrix (%):")
    assert printed[header + 1].split() == ["english", "german", "french"]
    assert printed[header + 4].split() == ["after", "task", "3"] + [f"{v:.1f}" for v in matrix[2]]
    assert f"| 2 | {matrix[1][0]:.1f} | {matrix[1][1]:.1f} |  |" in first
    assert "## General ability" in first and f"| seq-lora | 1 | {logs[-1]['general_nll']:.3f} |" in first
    assert "Row t, column i: score on task i" in first and "all seen classes" not in first
    assert "| method | seeds | final score | AAA |" in first and "final Acc" not in first
    assert "classification benchmarks" not in first  # no seed-noise figure borrowed from classification
    assert main(["report", str(out)]) == 0
    again = (out / "report.md").read_text()
    assert again.splitlines()[2] == first.splitlines()[2] and "--method seq-lora" in again.splitlines()[2]
    # a comparison folder of committed runs (results.json only): the machine they ran on is not this process's
    copied = tmp_path / "cmp" / "runs" / "seq-lora-seed0"
    copied.mkdir(parents=True)
    (copied / "results.json").write_text((out / "results.json").read_text())
    assert main(["report", str(tmp_path / "cmp")]) == 0
    assert "Machine: not recorded with these runs (this report was written on " in (
        tmp_path / "cmp" / "summary.md").read_text()
    (copied / "summary.json").write_text((out / "summary.json").read_text())  # the run's own record of its machine
    (tmp_path / "cmp" / "summary.json").unlink()
    assert main(["report", str(tmp_path / "cmp")]) == 0
    machine = json.loads((out / "summary.json").read_text())["machine"]
    assert f"Machine: {machine}  " in (tmp_path / "cmp" / "summary.md").read_text()


@pytest.mark.slow
def test_smollm2_loads_as_a_plain_llama_without_a_progress_bar(capfd):
    """The built-in SmolLM2 (fetched from PyPI, ≈ 90 MB): a plain fp32 LlamaForCausalLM of 134.5 M parameters; the
    GGUF conversion prints no bar of its own (it showed under --quiet: transformers' disable_progress_bar missed it)."""
    from perturbmerge.backbones import build_backbone
    from perturbmerge.data import fetch as fetch_module

    fetch_module.fetch("smollm2")
    capfd.readouterr()
    backbone = build_backbone("smollm2", 0)
    assert "Converting" not in capfd.readouterr().err
    model = backbone.module.model
    assert type(model).__name__ == "LlamaForCausalLM" and getattr(model, "hf_quantizer", None) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 134.5
    assert backbone.lora_targets == ["q_proj", "v_proj"]
