"""`perturbmerge generate`: greedy completions from a saved causal LM (a run's exported model, or any saved Hugging
Face causal LM folder), for prompts or for the lines of a prompt/completion JSONL, scored per task as a run scores
them (kinds/causal_lm.py). Prompts go through the tokenizer's chat template when it has one."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import UserError


def load_language_model(folder: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a folder, offline; an exported folder's manifest is checked first."""
    from .backbones import _offline_transformers, is_causal_lm_checkpoint
    from .export import verify_model_folder

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UserError(f"'{folder}' has no config.json; give a folder written by `perturbmerge export` of a "
                        f"language-model run or by save_pretrained")
    if (folder / "MANIFEST.json").exists():
        verify_model_folder(folder)
    elif (folder / "perturbmerge_model.json").exists():
        raise UserError(f"'{folder}' has no MANIFEST.json; export the model again")
    if not is_causal_lm_checkpoint(folder):
        raise UserError(f"'{folder}' is not a causal language model (its config names no *ForCausalLM); for a "
                        f"classifier use `perturbmerge predict`")
    transformers = _offline_transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    return model, tokenizer


def generate_texts(folder: str | Path, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    from .data.completions import prompt_ids
    from .kinds.causal_lm import greedy_generate

    model, tokenizer = load_language_model(folder)
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    return [text for start in range(0, len(ids), batch_size)
            for text in greedy_generate(model, tokenizer, ids[start:start + batch_size], max_new_tokens,
                                        torch.device("cpu"))]


def score_jsonl(folder: str | Path, path: str | Path, batch_size: int) -> list[dict[str, Any]]:
    """Per task of a prompt/completion JSONL (its test lines where a split is given, else all): the metric, the
    number of examples and the mean score (%)."""
    from .data.completions import completion_ids, prompt_ids, read_completion_jsonl, task_metric, task_names
    from .kinds.causal_lm import SCORES, greedy_generate

    model, tokenizer = load_language_model(folder)
    records = read_completion_jsonl(Path(path))
    rows = []
    for name in task_names(records):
        members = [r for r in records if r.task == name]
        metric = task_metric(members, name, f"JSONL '{path}'")
        chosen = [r for r in members if r.split == "test"] or members
        budget = max(len(completion_ids(tokenizer, r.completion)) for r in chosen)
        scores = []
        for start in range(0, len(chosen), batch_size):
            part = chosen[start:start + batch_size]
            texts = greedy_generate(model, tokenizer, [prompt_ids(tokenizer, r.prompt) for r in part], budget,
                                    torch.device("cpu"))
            scores += [SCORES[metric](text, r.completion) for text, r in zip(texts, part)]
        rows.append({"task": name, "metric": metric, "examples": len(chosen), "score": sum(scores) / len(scores)})
    return rows
