"""The two scripts in examples/ run as a user runs them, on a tiny local encoder and a CSV of texts."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import csv_rows, save_tiny_hf_encoder, write_csv

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script", ["own_loop.py", "trainer.py"])
def test_example_runs_three_tasks(tmp_path, script):
    save_tiny_hf_encoder(tmp_path / "enc")
    write_csv(tmp_path / "data.csv", csv_rows(classes=6, per_class=10))
    out = subprocess.run([sys.executable, str(EXAMPLES / script), "--benchmark", f"csv:{tmp_path / 'data.csv'}",
                          "--backbone", f"hf:{tmp_path / 'enc'}", "--epochs", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = re.findall(r"^task (\d): alpha ([0-9.]+), accuracy on all seen tasks ([0-9.]+) %$", out.stdout, re.M)
    assert [int(t) for t, _, _ in lines] == [1, 2, 3], out.stdout
    assert float(lines[0][1]) == 1.0  # the first task: nothing to merge with
    assert all(0.0 <= float(a) <= 1.0 and 0.0 <= float(acc) <= 100.0 for _, a, acc in lines)


def test_the_language_model_example_runs_three_tasks(tmp_path):
    """examples/lm_three_tasks.py on a tiny random Llama (the example's default is SmolLM2)."""
    from helpers import save_tiny_llama

    save_tiny_llama(tmp_path / "lm")
    out = subprocess.run([sys.executable, str(EXAMPLES / "lm_three_tasks.py"), "--jsonl",
                          str(EXAMPLES / "number_words.jsonl"), "--backbone", f"hf:{tmp_path / 'lm'}", "--epochs", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = re.findall(r"^task (\d): alpha ([0-9.]+), score per seen task \[(.*)\]$", out.stdout, re.M)
    assert [int(t) for t, _, _ in lines] == [1, 2, 3], out.stdout
    assert float(lines[0][1]) == 1.0 and all(0.0 <= float(a) <= 1.0 for _, a, _ in lines)
    assert [len(scores.split(",")) for _, _, scores in lines] == [1, 2, 3]
