"""benchmarks/settings_table.py: per-seed final Acc, mean ± sample std and the paired difference to the default row,
on hand-made run files (checked against statistics by hand)."""
from __future__ import annotations

import json

import pytest

from helpers import load_script


@pytest.fixture(scope="module")
def settings():
    return load_script("benchmarks/settings_table.py")


def test_rows_means_and_paired_differences(settings, tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "ROOT", tmp_path)
    finals = {"base": {0: 20.0, 1: 30.0, 2: 40.0}, "other": {0: 25.0, 1: 31.0}}  # other: seed 2 missing
    for name, by_seed in finals.items():
        for seed, final in by_seed.items():
            run = tmp_path / "benchmarks" / "r" / f"{name}-seed{seed}"
            run.mkdir(parents=True)
            (run / "results.json").write_text(json.dumps({"final_acc": final}))
    rows = [settings.parse_row("p = 1 (default)=benchmarks/r/base-seed{seed}"),
            settings.parse_row("p = 2=benchmarks/r/other-seed{seed}")]
    assert rows[0] == ("p = 1 (default)", "benchmarks/r/base-seed{seed}")
    lines = settings.table(rows, "p = 1 (default)", [0, 1, 2])
    assert lines[2] == "| p = 1 (default) | 20.00 | 30.00 | 40.00 | 30.00 ± 10.00 | – |"
    # differences +5, +1 over the two common seeds: mean +3, sample std sqrt(8) = 2.83
    assert lines[3] == "| p = 2 | 25.00 | 31.00 | – | 28.00 ± 4.24 | +3.00 ± 2.83 |"
    with pytest.raises(SystemExit):
        settings.parse_row("no pattern here")
