"""P&M in a hand-written PyTorch loop: 3 wordnet tasks (class-incremental) on MiniLM, CPU, a few minutes.

    python examples/own_loop.py                                     # needs `perturbmerge data fetch wordnet`
    python examples/own_loop.py --benchmark csv:my.csv --backbone hf:my-encoder   # your texts and encoder

The lines that P&M adds to a plain loop are marked `# P&M`.
"""
import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from perturbmerge import PerturbAndMerge, load_backbone, load_tasks

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--benchmark", default="wordnet")
parser.add_argument("--backbone", default=None, help="default: the benchmark's (MiniLM for wordnet)")
parser.add_argument("--tasks", type=int, default=3)
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()

torch.manual_seed(0)
stream = load_tasks(args.benchmark, num_tasks=args.tasks, seed=0, backbone=args.backbone)
backbone = load_backbone(stream.backbone)
num_classes = sum(task.num_classes for task in stream.tasks)


class Classifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = backbone.module  # a batch -> [N, d] features
        self.head = torch.nn.Linear(backbone.feature_dim, num_classes)

    def forward(self, inputs):
        return self.head(self.encoder(inputs))


def batches(dataset, shuffle):
    return DataLoader(dataset, batch_size=32, shuffle=shuffle, collate_fn=stream.collate)


def per_sample_loss(module, batch):  # cross-entropy over the classes seen so far, one value per example
    inputs, labels = batch
    return F.cross_entropy(module(inputs)[:, :seen], labels, reduction="none")


@torch.no_grad()
def accuracy(model, tasks):
    model.eval()
    correct = total = 0
    for task in tasks:
        for inputs, labels in batches(task.test, False):
            correct += int((model(inputs)[:, :seen].argmax(-1) == labels).sum())
            total += len(labels)
    return 100.0 * correct / total


pm = PerturbAndMerge(Classifier(), targets=backbone.lora_targets, rank=8, epsilon=0.5, p0=1 / 3,  # P&M
                     train_modules=["head"])
for task in stream.tasks:
    seen = task.label_offset + task.num_classes
    trainable = pm.begin_task()  # P&M: a fresh LoRA adapter
    optimizer = torch.optim.AdamW(pm.parameters(), lr=1e-3)  # P&M: LoRA A, B and the head
    trainable.train()
    for epoch in range(args.epochs):
        for batch in batches(task.train, True):
            with pm.perturbed():  # P&M: W + (1 + sε)ΔW for this step
                loss = per_sample_loss(trainable, batch).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    record = pm.end_task(batches(task.train, False), per_sample_loss)  # P&M: Fisher → α* → fold
    print(f"task {task.index + 1}: alpha {record.alpha:.3f}, accuracy on all seen tasks "
          f"{accuracy(pm.model, stream.tasks[: task.index + 1]):.1f} %", flush=True)
