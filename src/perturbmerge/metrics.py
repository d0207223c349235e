"""Continual-learning metrics from the accuracy matrix (pm-method.md §6). All values in percent.

R[t][i] = accuracy on task i after training task t (None for i > t); A_t = accuracy on all seen classes.
    final_acc   = A_T
    aaa         = mean_t A_t                                   (average anytime accuracy)
    forgetting  = mean_{i<T} (max_{i≤t<T} R[t][i] − R[T][i])   (max − last, as Mammoth/PILOT)
    bwt         = mean_{i<T} (R[T][i] − R[i][i])
    plasticity  = mean_t R[t][t]
Forgetting and BWT are None for a single task.
"""
from __future__ import annotations

from statistics import fmean
from typing import Sequence


def summarise(accuracy_matrix: Sequence[Sequence[float | None]], acc_all_seen: Sequence[float]) -> dict[str, float | None]:
    num_tasks = len(accuracy_matrix)
    if num_tasks == 0 or len(acc_all_seen) != num_tasks:
        raise ValueError("need one accuracy-matrix row and one all-seen accuracy per task")
    for t, row in enumerate(accuracy_matrix):
        if any(row[i] is None for i in range(t + 1)):
            raise ValueError(f"row {t} of the accuracy matrix is missing entries for seen tasks")
    last = num_tasks - 1
    final_row = accuracy_matrix[last]
    earlier = range(last)
    forgetting = (
        fmean(max(accuracy_matrix[t][i] for t in range(i, last)) - final_row[i] for i in earlier) if last else None
    )
    bwt = fmean(final_row[i] - accuracy_matrix[i][i] for i in earlier) if last else None
    return {
        "final_acc": acc_all_seen[last],
        "aaa": fmean(acc_all_seen),
        "forgetting": forgetting,
        "bwt": bwt,
        "plasticity": fmean(accuracy_matrix[t][t] for t in range(num_tasks)),
    }
