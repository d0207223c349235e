"""Causal language modelling: a task is a list of (prompt, completion) pairs (data/completions.py), the model is a
causal LM (backbones.CausalLMBackbone: its outputs are, per example, the summed completion-token NLL and the number
of completion tokens), and the score of a task is that of greedy generations against the reference completions.

    training loss       the mean NLL over every completion token of the batch (token-level, as SFT trainers do)
    per-example loss    the example's summed completion NLL, −log p(completion | prompt): the log-likelihood whose
                        squared gradient the empirical Fisher averages (a mean over its tokens would weigh a long
                        completion's gradient as much as a one-token answer's; docs/method.md)
    score               exact match after normalisation (case, surrounding space and punctuation, runs of spaces)
                        for short answers; chrF (sacrebleu) for free text; in % per task, and over all test examples
    generation          greedy, batched, left-padded prompts, max_new_tokens = the task's longest completion

No head: head parts and the frozen-backbone classifiers refuse to run on this kind.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .base import TaskKind, register_task_kind

if TYPE_CHECKING:
    from ..context import TaskContext
    from ..data import Task

GENERATION_BATCH = 16


def normalise_answer(text: str) -> str:
    """Lower case, runs of white space as one space, no surrounding space or punctuation."""
    return re.sub(r"\s+", " ", text.lower()).strip().strip(".,;:!?\"'").strip()


def exact_match(prediction: str, reference: str) -> float:
    return 100.0 if normalise_answer(prediction) == normalise_answer(reference) else 0.0


def chrf(prediction: str, reference: str) -> float:
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(prediction, [reference]).score)


SCORES = {"exact_match": exact_match, "chrf": chrf}


@torch.no_grad()
def greedy_generate(model: nn.Module, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
                    device: torch.device) -> list[str]:
    """Greedy completions of tokenised prompts, batched with left padding; the new tokens decoded."""
    length = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(prompts), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt):] = torch.as_tensor(prompt)
        attention_mask[row, length - len(prompt):] = 1
    generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                               do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                               eos_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(generated[:, length:].cpu(), skip_special_tokens=True)


class LanguageModel(nn.Module):
    """What the learner trains for this kind: the causal LM as `backbone` (adapted, folded, replaced by a fold)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.backbone(inputs)


class CausalLMKind(TaskKind):
    name = "causal_lm"
    score_name = "score (%)"
    has_head = False
    full_weight_fisher = False  # the completion positions are data-dependent: vmap cannot trace the loss

    def build_model(self, backbone) -> nn.Module:
        return LanguageModel(backbone.module)

    def loss(self, context: "TaskContext", outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return outputs[:, 0].sum() / outputs[:, 1].sum().clamp(min=1.0)

    def example_losses(self, context: "TaskContext", outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return outputs[:, 0]

    def generate(self, context: "TaskContext", dataset, indices: list[int]) -> list[str]:
        """Greedy completions of the dataset's prompts at `indices`."""
        from ..backbones import causal_lm_of

        with context.autocast():
            return greedy_generate(causal_lm_of(context.model.backbone).model, dataset.tokenizer,
                                   [dataset.prompts[i] for i in indices], dataset.max_new_tokens(indices),
                                   context.device)

    @torch.no_grad()
    def reference_scores(self, context: "TaskContext", reference: Any) -> dict[str, float]:
        """general_nll: the mean NLL per completion token of the held-out general pairs (JSONL lines with
        "split": "general", which no task trains on): does the model still speak?"""
        if reference is None:
            return {}
        nll, tokens = 0.0, 0.0
        for inputs, _ in context.loader(reference, context.eval_batch_size):
            with context.autocast():
                outputs = context.model(context.to_device(inputs)).double()
            nll, tokens = nll + float(outputs[:, 0].sum()), tokens + float(outputs[:, 1].sum())
        return {"general_nll": nll / tokens}

    def evaluate(self, context: "TaskContext", tasks: list["Task"]) -> tuple[list[float], float]:
        from tqdm.auto import tqdm

        per_task, scores_all = [], []
        bar = tqdm(total=sum(len(task.test) for task in tasks), desc="generating", unit="answer",
                   disable=not context.progress, leave=False)
        for task in tasks:
            dataset, scores = task.test, []
            for start in range(0, len(dataset), GENERATION_BATCH):
                indices = list(range(start, min(start + GENERATION_BATCH, len(dataset))))
                for index, prediction in zip(indices, self.generate(context, dataset, indices)):
                    scores.append(SCORES[dataset.metrics[index]](prediction, dataset.references[index]))
                bar.update(len(indices))
            per_task.append(sum(scores) / len(scores))
            scores_all += scores
        bar.close()
        return per_task, sum(scores_all) / len(scores_all)


register_task_kind("causal_lm", lambda config: CausalLMKind())
