"""Throughput of the ViT-B/16 path: training and evaluation images/s, Fisher-pass time, peak memory.

Random-init ViT-B/16 (transformers ViTConfig defaults: 12 layers, hidden 768, patch 16, 224×224), LoRA rank 10 on
key/value (PEFT), a 20-class head, synthetic uint8 images. A training step is one P&M step: a ±ε draw, forward at
W + (1 + sε)ΔW, backward, AdamW. The Fisher pass is the per-sample W-space Fisher of every adapted matrix.

    python benchmarks/throughput.py --device cuda --precision bf16 --batch-size 256 --steps 200 \
        --out benchmarks/results/throughput-h100.json

Writes JSON (numbers, device, versions, the command) and prints a markdown row.
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import time

import torch
import torch.nn.functional as F


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200, help="timed training steps (after 3 warm-up steps)")
    parser.add_argument("--fisher-samples", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12, help="12 = ViT-B/16; fewer for a quick CPU check")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from transformers import ViTConfig, ViTModel

    from perturbmerge.adaptation import LoraAdaptation
    from perturbmerge.backbones import HFVisionBackbone, key_value_targets
    from perturbmerge.io import atomic_write_json, machine_description, package_versions
    from perturbmerge.perturb import PerturbationSchedule

    device = torch.device(args.device)
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(num_hidden_layers=args.layers), add_pooling_layer=False)
    backbone = HFVisionBackbone(vit, 224, [0.5] * 3, [0.5] * 3).to(device)
    adaptation = LoraAdaptation(rank=10, alpha=20, dropout=0.0, targets=key_value_targets(vit))
    model = adaptation.attach(backbone).to(device)
    head = torch.nn.Linear(768, 20).to(device)
    optimizer = torch.optim.AdamW([{"params": adaptation.trainable_parameters(), "lr": 1e-3},
                                   {"params": head.parameters(), "lr": 1e-2}])
    schedule = PerturbationSchedule(0.5, 1 / 3, seed=0)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else torch.autocast(device.type, enabled=False))
    images = torch.randint(0, 256, (args.batch_size, 3, 224, 224), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 20, (args.batch_size,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def train_step() -> None:
        shift = schedule.draw() * 0.5
        with autocast:
            loss = F.cross_entropy(head(adaptation.features_along_task_vector(images, shift)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    for _ in range(3):
        train_step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    _sync(device)
    train_s = time.perf_counter() - start

    model.eval()
    start = time.perf_counter()
    with torch.no_grad(), autocast:
        for _ in range(max(1, args.steps // 4)):
            head(model(images)).argmax(-1)
    _sync(device)
    eval_s = time.perf_counter() - start

    fisher_batch = min(args.batch_size, 64)
    batches = [(images[:fisher_batch], labels[:fisher_batch])] * max(1, args.fisher_samples // fisher_batch)
    start = time.perf_counter()
    adaptation.fisher(batches, lambda out, y: F.cross_entropy(head(out), y, reduction="none"), False, "Fisher")  # fp32, as in a run
    _sync(device)
    fisher_s = time.perf_counter() - start
    fisher_n = fisher_batch * len(batches)

    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    result = {
        "command": "python " + shlex.join(sys.argv),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else machine_description(),
        "precision": args.precision, "batch_size": args.batch_size, "layers": args.layers, "steps": args.steps,
        "train_images_per_s": args.batch_size * args.steps / train_s,
        "eval_images_per_s": args.batch_size * max(1, args.steps // 4) / eval_s,
        "fisher_seconds": fisher_s, "fisher_samples": fisher_n, "fisher_samples_per_s": fisher_n / fisher_s,
        "peak_memory_gib": peak, "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda"
        else "process max RSS",
        "versions": package_versions(),
    }
    atomic_write_json(args.out, result)
    print(f"| {result['device']} | {args.precision} | {args.batch_size} | {result['train_images_per_s']:.1f} | "
          f"{result['eval_images_per_s']:.1f} | {fisher_s:.2f} s / {fisher_n} | {peak:.2f} GiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
