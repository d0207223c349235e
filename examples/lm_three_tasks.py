"""P&M on a decoder language model in your own loop: SmolLM2 learns three tasks one after another (numbers as words
in English, then German, then French); after each task the adapter is merged with the closed-form α*.

    perturbmerge data fetch smollm2 && python examples/lm_three_tasks.py          # CPU, a few minutes
"""
import argparse

import torch
from torch.utils.data import DataLoader

from perturbmerge import PerturbAndMerge, load_backbone, load_tasks
from perturbmerge.kinds.causal_lm import SCORES, greedy_generate

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--jsonl", default="examples/number_words.jsonl")  # lines of task, prompt, completion
parser.add_argument("--backbone", default="smollm2")  # or hf:DIR of any saved causal LM
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()

torch.manual_seed(0)
stream = load_tasks(f"jsonl:{args.jsonl}", backbone=args.backbone)  # tokenised through the chat template
lm = load_backbone(args.backbone).module  # a batch -> [N, 2]: Σ completion-token NLL, completion tokens
pm = PerturbAndMerge(lm, targets=["q_proj", "v_proj"], rank=8, epsilon=0.5)  # P&M
for task in stream.tasks:
    trainable = pm.begin_task()  # P&M: a fresh LoRA adapter
    optimizer = torch.optim.AdamW(pm.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        for inputs, _ in DataLoader(task.train, batch_size=8, shuffle=True, collate_fn=stream.collate):
            with pm.perturbed():  # P&M: W + (1 + sε)ΔW for this step
                out = trainable(inputs)
                loss = out[:, 0].sum() / out[:, 1].sum()  # mean NLL over the completion tokens
            loss.backward(); optimizer.step(); optimizer.zero_grad()
    batches = DataLoader(task.train, batch_size=8, collate_fn=stream.collate)
    record = pm.end_task(batches, lambda model, batch: model(batch[0])[:, 0])  # P&M: Fisher → α* → merge
    scores = []
    for seen in stream.tasks[: task.index + 1]:
        test = seen.test
        texts = greedy_generate(pm.model.model, test.tokenizer, test.prompts, test.max_new_tokens(), torch.device("cpu"))
        scores.append(sum(SCORES[m](t, r) for t, r, m in zip(texts, test.references, test.metrics)) / len(texts))
    print(f"task {task.index + 1}: alpha {record.alpha:.3f}, score per seen task {[round(s, 1) for s in scores]}")
