"""Refactors keep results bit-identical: every registered method on `digits` (and a few option variants) against a
golden file written by tests/golden/make_golden.py, compared with `==`.

Bit equality is only defined on the machine kind that wrote a file (other CPUs run other float kernels), so each
file records its machine (CPU model, torch's CPU capability, torch version) and the test uses the file of this
machine; where none matches it skips and says how to write one. A mismatch fails with a readable list of which
method, task and figure moved, never with a comparison error."""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import pytest
import torch

from perturbmerge.cli import main
from perturbmerge.methods import METHODS

FOLDER = Path(__file__).resolve().parent / "golden"
GOLDEN = FOLDER / "digits.json"  # the first file; make_golden.py names others after their machine
ARGS = ["--benchmark", "digits", "--tasks", "3", "--seed", "0", "--quiet", "--set", "epochs=1"]
# Options that the default runs do not reach (Fisher kinds and logits, α per module, anchor, heads, drift, micro-
# batches), each as `method key=value ...`: the paths a refactor of the parts is most likely to move.
VARIANTS = (
    "pm-lora fisher.kind=sampled",
    "pm-lora fisher.logits=seen head.train_logits=seen",
    "pm-lora alpha_granularity=module",
    "pm-lora anchor_pretrained=true fisher.normalise=trace",
    "pm-lora head.kind=prototype head.probe_epochs=1 head.refit_epochs=1",
    "pm-lora grad_accumulation=2",
    "pm-lora-plus head.drift=sdc",
    "pm-lora-fecam head.drift=linear",
    "pm-full alpha_granularity=module fisher.kind=sampled",
    "ewc-lora fisher.max_samples=40",
)


def machine() -> dict[str, str]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return {"cpu": model, "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def machine_file_name(kind: dict[str, str]) -> str:
    """digits-<cpu>-<capability>-<torch>.json, lower case, letters, digits and dashes only."""
    words = "-".join((kind["cpu"], kind["capability"], kind["torch"])).lower()
    return "digits-" + "-".join("".join(c if c.isalnum() else " " for c in words).split()) + ".json"


def golden_files() -> list[Path]:
    return sorted(FOLDER.glob("digits*.json"))


def golden_for_this_machine() -> dict[str, Any] | None:
    mine = machine()
    for path in golden_files():
        data = json.loads(path.read_text())
        if data["machine"] == mine:
            return data
    return None


def run_digits(method: str, out: Path, sets: list[str] = ()) -> dict:
    extra = ["--set", *sets] if sets else []
    assert main(["run", "--method", method, "--out", str(out), *ARGS, *extra]) == 0
    return json.loads((out / "results.json").read_text())


def run_variant(variant: str, out: Path) -> dict:
    method, *sets = variant.split()
    return run_digits(method, out, sets)


def golden_record(results: dict) -> dict:
    logs = results["task_logs"]
    return {"accuracy_matrix": results["accuracy_matrix"], "alphas": results["alphas"],
            "fisher_mass": [log.get("fisher_mass") for log in logs],
            "task_vector_norm": [log.get("task_vector_norm") for log in logs],
            "train_loss_last_epoch": [log.get("train_loss_last_epoch") for log in logs]}


def differences(expected: Any, actual: Any, where: str) -> list[str]:
    """Readable lines for every entry that differs: 'pm-lora accuracy_matrix[2][1]: 28.834 → 29.447'."""
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} entries → {len(actual)}"]
        return [line for i, (e, a) in enumerate(zip(expected, actual)) for line in differences(e, a, f"{where}[{i}]")]
    if isinstance(expected, dict) and isinstance(actual, dict):
        keys = sorted(set(expected) | set(actual))
        return [line for k in keys for line in differences(expected.get(k), actual.get(k), f"{where}.{k}")]
    same = expected == actual or (isinstance(expected, float) and isinstance(actual, float)
                                  and math.isnan(expected) and math.isnan(actual))
    return [] if same else [f"{where}: {expected!r} → {actual!r}"]


def readable(expected: dict, actual: dict, name: str) -> str:
    lines = [line for key in expected for line in differences(expected[key], actual.get(key), f"{name} {key}")]
    task_note = "(accuracy_matrix[t][i]: task i's accuracy after task t, both 0-based)"
    return f"{len(lines)} figure(s) moved {task_note}:\n  " + "\n  ".join(lines[:40])


@pytest.fixture(scope="module")
def golden() -> dict:
    data = golden_for_this_machine()
    if data is None:
        kinds = ", ".join(f"{p.name}: {json.loads(p.read_text())['machine']}" for p in golden_files())
        pytest.skip(f"no golden file for this machine kind {machine()} (bit equality is defined per CPU kind; "
                    f"files: {kinds}); write one at the reference commit with `.venv/bin/python "
                    f"tests/golden/make_golden.py --machine-file`")
    return data


def compare(expected: dict, actual: dict, name: str) -> None:
    if actual != expected:
        pytest.fail(readable(expected, actual, name), pytrace=False)


CLASSIFICATION_METHODS = sorted(name for name, spec in METHODS.items() if spec.kinds is None
                                or "classification" in spec.kinds)  # what runs on digits


def test_golden_file_covers_every_registered_method(golden):
    assert sorted(golden["methods"]) == CLASSIFICATION_METHODS


def one_thread(run):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums are bit-identical only under the same thread count
    try:
        return run()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("method", CLASSIFICATION_METHODS)
def test_results_equal_the_golden_file(method, golden, tmp_path):
    mine = one_thread(lambda: golden_record(run_digits(method, tmp_path / method)))
    compare(golden["methods"][method], mine, method)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_equal_the_golden_file(variant, golden, tmp_path):
    if variant not in golden.get("variants", {}):
        pytest.skip(f"this machine's golden file has no record of '{variant}'")
    mine = one_thread(lambda: golden_record(run_variant(variant, tmp_path / "run")))
    compare(golden["variants"][variant], mine, variant)


def test_a_moved_figure_is_named_not_a_type_error():
    """The message a mismatch gives: which method, which entry, old → new (None entries compare fine)."""
    expected = {"accuracy_matrix": [[70.0, None], [60.0, 50.0]], "alphas": None}
    actual = {"accuracy_matrix": [[70.0, None], [60.0, 51.5]], "alphas": None}
    text = readable(expected, actual, "pm-lora")
    assert "1 figure(s) moved" in text and "pm-lora accuracy_matrix[1][1]: 50.0 → 51.5" in text
    assert differences(expected, expected, "x") == []
    assert differences([1.0], [1.0, 2.0], "m a") == ["m a: 1 entries → 2"]


def test_machine_file_names_are_plain():
    name = machine_file_name({"cpu": "Intel(R) Xeon(R) Processor", "capability": "AVX512", "torch": "2.13.0+cpu"})
    assert name == "digits-intel-r-xeon-r-processor-avx512-2-13-0-cpu.json"
