"""The sentences a comparison's summary adds: the head-bias note (issue 50: the demo's seq-lora diagonal of 0–6 % is
head bias, not backbone forgetting) and the paired intervals against the reference method."""
from __future__ import annotations

from perturbmerge.report import difference_lines, head_bias_sentence, paired_differences


def run(method: str, seed: int, matrix, head: str = "linear", final: float | None = None) -> dict:
    seen = [sum(row[: t + 1]) / (t + 1) for t, row in enumerate(matrix)]
    return {"method": method, "seed": seed, "scenario": "class-incremental", "accuracy_matrix": matrix,
            "acc_all_seen": seen, "final_acc": final if final is not None else seen[-1],
            "config": {"head": {"kind": head}}}


def test_the_head_bias_sentence_names_the_low_diagonal_and_the_frozen_reference():
    runs = [run("seq-lora", 0, [[4.0, None], [80.0, 2.0]]), run("frozen-lda", 0, [[90.0, None], [88.0, 86.0]], "lda")]
    text = head_bias_sentence(runs)
    assert "`seq-lora`: mean R[t][t] 3.0 %" in text and "in part" in text and "`frozen-lda` (no training" in text and "87.0 %" in text
    assert head_bias_sentence([runs[1]]) == ""  # no linear head: no sentence


def test_paired_lines_carry_both_intervals_against_seq_lora():
    runs = [run("seq-lora", s, [[50.0]], final=f) for s, f in enumerate((20.0, 25.0, 15.0))]
    runs += [run("pm-lora", s, [[50.0]], final=f) for s, f in enumerate((30.0, 31.0, 29.0))]
    lines = difference_lines(paired_differences(runs))
    assert lines[0].startswith("- pm-lora − seq-lora: +10.00 ± 4.00 (3 seeds; 95 % CI t +0.06 … +19.94, ")
    assert "bootstrap" in lines[0]
