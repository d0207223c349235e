"""The RanPAC head (McDonnell et al., NeurIPS 2023) as a head part: a fixed random projection of the features with
a ReLU, and a ridge-regression read-out from statistics accumulated over every task (no example is stored):

    h = ReLU(f W_rand),  W_rand ∈ R^{d×M}, entries N(0, 1), drawn once per run (stream `random_projection`)
    G = Σ h hᵀ,  Q = Σ h yᵀ  (y one-hot over the seen classes; float64, summed over tasks and processes)
    W_o = (G + λI)⁻¹ Q,  logits = h W_o

λ is chosen per task as in the paper: among 10⁻⁸ … 10⁸, the one whose ridge fitted on 80 % of the current task's
training examples has the least mean squared error on the other 20 % (here every fifth example by index, fixed;
the paper takes a random 20 %). The MSE is computed from the two parts' Gram and cross-moment sums, so no
example is kept across tasks and several processes agree. When a task has no more training rows than M (one
process), λ is chosen in the dual instead, from the task's own projected rows (`choose_ridge_from_rows`): the same
λ at O(n²M) instead of the O(M³) eigendecomposition of G, which dominates a CPU run at M = 8192.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..streams import generator

if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext

RIDGES = tuple(10.0 ** k for k in range(-8, 9))
HELD_OUT_EVERY = 5  # every fifth training example of a task is in the 20 % that chooses λ
GPU_WIDTH, CPU_WIDTH = 10_000, 2048  # the paper's M on a GPU; a width whose ridge costs seconds on a CPU core


def default_projection_width(device: torch.device) -> int:
    """head.rp_dim when unset: the paper's 10,000 on CUDA; 2048 elsewhere (the read-out solve is O(M³), and
    choosing λ from the sums costs an M × M eigendecomposition: 175 s at M = 8192 on one CPU core, 3 s from a
    2,000-row task's rows; docs/performance.md)."""
    return GPU_WIDTH if device.type == "cuda" else CPU_WIDTH


@dataclass
class RandomProjectionClassifier:
    """The deployed RanPAC head: logits = ReLU(f W_rand) W_o (a plain attribute of the model, not in its state)."""

    projection: torch.Tensor  # [d, M]
    readout: torch.Tensor  # [M, C]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(features.to(self.projection.dtype) @ self.projection)
        return (hidden @ self.readout).to(features.dtype)


def ridge_readout(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """W_o = (G + λI)⁻¹ Q."""
    return torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device), cross)


def held_out_error(readout: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, count: float) -> float:
    """Σ ‖h W − y‖² / (n·C) over the held-out rows, from their sums: tr(Wᵀ G W) − 2 tr(Wᵀ Q) + n (one-hot y)."""
    total = (readout * (gram @ readout)).sum() - 2 * (readout * cross).sum() + count
    return float(total) / (count * readout.shape[1])


def choose_ridge(fit: tuple[torch.Tensor, torch.Tensor], held_out: tuple[torch.Tensor, torch.Tensor],
                 held_out_count: float) -> float:
    """The λ of RIDGES whose ridge fitted on `fit` = (G, Q) has the least MSE on the held-out (G, Q). One
    eigendecomposition G = V diag(e) Vᵀ serves every λ: (G + λI)⁻¹ Q = V diag(1 / (e + λ)) Vᵀ Q."""
    values, vectors = torch.linalg.eigh(fit[0])
    rotated = vectors.T @ fit[1]
    errors = [held_out_error(vectors @ (rotated / (values + ridge).unsqueeze(1)), *held_out, held_out_count)
              for ridge in RIDGES]
    return RIDGES[min(range(len(RIDGES)), key=errors.__getitem__)]


def choose_ridge_from_rows(fit: tuple[torch.Tensor, torch.Tensor],
                           held_out: tuple[torch.Tensor, torch.Tensor]) -> float:
    """`choose_ridge` from the rows (H, Y) of the two parts instead of their sums, for n_fit ≤ M. In the dual,
    (HᵀH + λI)⁻¹HᵀY = Hᵀ(HHᵀ + λI)⁻¹Y, and one eigendecomposition HHᵀ = U diag(e) Uᵀ (n × n) serves every λ:
    the held-out predictions are H_h Hᵀ U diag(1 / (e + λ)) Uᵀ Y, and the MSE is Σ‖prediction − y‖² / (n_h·C)."""
    (hidden, targets), (held_hidden, held_targets) = fit, held_out
    values, vectors = torch.linalg.eigh(hidden @ hidden.T)
    values = values.clamp_min(0.0)  # HHᵀ is positive semi-definite; rounding can leave tiny negative eigenvalues
    rotated = vectors.T @ targets
    cross_kernel = held_hidden @ (hidden.T @ vectors)
    errors = [float(((cross_kernel @ (rotated / (values + ridge).unsqueeze(1)) - held_targets) ** 2).sum())
              / (len(held_targets) * targets.shape[1]) for ridge in RIDGES]
    return RIDGES[min(range(len(RIDGES)), key=errors.__getitem__)]


class RandomProjectionHead:
    def __init__(self, width: int | None, run_seed: int) -> None:
        self.width, self.run_seed = width, run_seed  # width None: default_projection_width of the run's device
        self.projection: torch.Tensor | None = None
        self.gram: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None  # [M, C], C grows with the seen classes
        self.ridges: list[float] = []

    def _project(self, features: torch.Tensor) -> torch.Tensor:
        if self.projection is None or self.projection.shape[0] != features.shape[1]:
            self.projection = torch.randn(features.shape[1], self.width, dtype=torch.float64,
                                          generator=generator(self.run_seed, "random_projection"))
        return torch.relu(features.double().cpu() @ self.projection)

    @torch.no_grad()
    def add_task(self, context: "TaskContext", task: "Task") -> dict[str, Any]:
        """Add the task's (G, Q) on the backbone as it is now; choose λ on it; return the log."""
        context.model.eval()
        if self.width is None:
            self.width = default_projection_width(context.device)
        classes = context.model.head.num_classes
        parts = {name: [torch.zeros(self.width, self.width, dtype=torch.float64),
                        torch.zeros(self.width, classes, dtype=torch.float64), 0.0] for name in ("fit", "held_out")}
        seen = 0
        # the task's rows, kept while the dual is the cheaper way to choose λ (one process, at most M rows: no more
        # memory than G itself); None once it is not
        kept: dict[str, list[list[torch.Tensor]]] | None = \
            {"fit": [[], []], "held_out": [[], []]} if context.world.size == 1 else None
        for inputs, labels in context.batches(task.train, context.eval_batch_size):
            hidden = self._project(context.model.backbone(inputs))
            targets = torch.nn.functional.one_hot(labels.cpu() + task.label_offset, classes).double()
            held = (torch.arange(seen, seen + len(labels)) % HELD_OUT_EVERY) == HELD_OUT_EVERY - 1
            seen += len(labels)
            kept = kept if seen <= self.width else None
            for name, rows in (("fit", ~held), ("held_out", held)):
                parts[name][0] += hidden[rows].T @ hidden[rows]
                parts[name][1] += hidden[rows].T @ targets[rows]
                parts[name][2] += float(rows.sum())
                if kept is not None:
                    kept[name][0].append(hidden[rows])
                    kept[name][1].append(targets[rows])
        for name in parts:  # every process's rows (index order is per process; the sums are what matter)
            parts[name] = [context.summed(parts[name][0]),
                           context.summed(parts[name][1]), context.sum_scalar(parts[name][2])]
        if kept is not None:
            ridge = choose_ridge_from_rows(*[(torch.cat(kept[name][0]), torch.cat(kept[name][1]))
                                             for name in ("fit", "held_out")])
        else:
            ridge = choose_ridge(parts["fit"][:2], parts["held_out"][:2], parts["held_out"][2])
        task_gram = parts["fit"][0] + parts["held_out"][0]
        task_cross = parts["fit"][1] + parts["held_out"][1]
        self.gram = task_gram if self.gram is None else self.gram + task_gram
        if self.cross is not None:  # earlier classes' columns, zero rows for the new ones
            task_cross[:, : self.cross.shape[1]] += self.cross
        self.cross = task_cross
        self.ridges.append(ridge)
        return {"ridge": ridge, "width": self.width}

    def classifier(self, device: torch.device) -> RandomProjectionClassifier:
        """The head for every seen class, with the last task's λ."""
        readout = ridge_readout(self.gram, self.cross, self.ridges[-1])
        return RandomProjectionClassifier(self.projection.to(device), readout.to(device))

    def state_dict(self) -> dict[str, Any]:
        return {"gram": self.gram, "cross": self.cross, "ridges": list(self.ridges)}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.gram, self.cross = state["gram"], state["cross"]
        self.ridges = list(state["ridges"])
