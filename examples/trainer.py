"""P&M with a plain `transformers.Trainer`: 3 wordnet tasks, one Trainer per task, MiniLM with a classification head.

    python examples/trainer.py                                      # needs `perturbmerge data fetch wordnet`
    python examples/trainer.py --benchmark csv:my.csv --backbone hf:my-encoder

`PerturbAndMergeCallback` draws the perturbation at every optimiser step and merges when each Trainer finishes.
"""
import argparse
import tempfile

import torch
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from perturbmerge import PerturbAndMerge, load_tasks
from perturbmerge.backbones import key_value_targets, local_model_path
from perturbmerge.integrations import PerturbAndMergeCallback

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--benchmark", default="wordnet")
parser.add_argument("--backbone", default=None, help="default: the benchmark's (MiniLM for wordnet)")
parser.add_argument("--tasks", type=int, default=3)
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()

torch.manual_seed(0)
stream = load_tasks(args.benchmark, num_tasks=args.tasks, seed=0, backbone=args.backbone)
num_classes = sum(task.num_classes for task in stream.tasks)
model = AutoModelForSequenceClassification.from_pretrained(str(local_model_path(stream.backbone)),
                                                           num_labels=num_classes)


class AsDicts(torch.utils.data.Dataset):
    """(token ids, label) pairs as the dicts a Trainer expects."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        ids, label = self.dataset[i]
        return {"input_ids": ids, "labels": int(label)}


def collate(items):
    inputs, labels = stream.collate([(item["input_ids"], torch.tensor(item["labels"])) for item in items])
    return {**inputs, "labels": labels}


@torch.no_grad()
def accuracy(model, tasks, seen):
    model.eval()
    correct = total = 0
    for task in tasks:
        for inputs, labels in torch.utils.data.DataLoader(task.test, batch_size=64, collate_fn=stream.collate):
            correct += int((model(**inputs).logits[:, :seen].argmax(-1) == labels).sum())
            total += len(labels)
    return 100.0 * correct / total


pm = PerturbAndMerge(model, targets=key_value_targets(model), rank=8, epsilon=0.5, p0=1 / 3,
                     train_modules=["classifier"])
callback = PerturbAndMergeCallback(pm)
with tempfile.TemporaryDirectory() as scratch:
    training = TrainingArguments(output_dir=scratch, num_train_epochs=args.epochs, per_device_train_batch_size=32,
                                 learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                                 logging_steps=10, disable_tqdm=True, seed=0)
    for task in stream.tasks:
        trainer = Trainer(model=pm.begin_task(), args=training, train_dataset=AsDicts(task.train),
                          data_collator=collate, callbacks=[callback])
        trainer.train()  # on_train_end: Fisher → α* → fold
        seen = task.label_offset + task.num_classes
        print(f"task {task.index + 1}: alpha {callback.records[-1].alpha:.3f}, accuracy on all seen tasks "
              f"{accuracy(pm.model, stream.tasks[: task.index + 1], seen):.1f} %", flush=True)
