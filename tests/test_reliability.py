"""Second round of reliability (issue 21): one writer per folder, checkpoint integrity, the finishing sequence,
signals and a full disk. Runs are digits, 2–3 tasks, one epoch: a few seconds each."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from perturbmerge import lock
from perturbmerge.checkpoint import FOLDER, latest_checkpoint
from perturbmerge.checkpoint import FORMAT as CHECKPOINT_FORMAT
from perturbmerge.cli import main
from perturbmerge.errors import UserError
from perturbmerge.io import write_manifest

RUN = ["--benchmark", "digits", "--tasks", "2", "--quiet", "--set", "epochs=1"]
RUN_WITH_STEPS = ["--benchmark", "digits", "--tasks", "3", "--quiet", "--set", "epochs=1", "checkpoint.every_steps=4"]

# Holds FOLDER's lock in a child process until its stdin closes.
HOLDER = """
import sys
from perturbmerge import lock
lock.acquire(sys.argv[1])
print("HELD", flush=True)
sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _holder(folder: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "HELD"
    return child


def _release(child: subprocess.Popen) -> None:
    child.stdin.close()
    child.wait(timeout=30)


# ---- one writer per folder -------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["compare", "run"])
def test_a_folder_held_by_another_process_is_refused_and_left_untouched(tmp_path, capsys, command):
    out = tmp_path / "shared-out"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "marker").write_text("theirs")
    child = _holder(out)
    try:
        args = (["compare", "--methods", "seq-lora", "--seeds", "0"] if command == "compare"
                else ["run", "--method", "seq-lora"]) + RUN + ["--out", str(out)]
        assert main(args) == 2
        message = capsys.readouterr().err.strip()
        assert f"is being written by process {child.pid} on " in message and len(message.splitlines()) == 1
        assert (out / "runs" / "marker").read_text() == "theirs"  # nothing deleted or written
        assert sorted(p.name for p in out.iterdir()) == [lock.LOCK_FILE, "runs"]
    finally:
        _release(child)


def test_the_other_order_a_child_writer_is_refused_by_our_lock(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock.acquire(out)
    try:
        done = subprocess.run([sys.executable, "-m", "perturbmerge.cli", "compare", "--methods", "seq-lora",
                               "--seeds", "0", *RUN, "--out", str(out)], capture_output=True, text=True)
        assert done.returncode == 2 and f"process {os.getpid()}" in done.stderr
        assert done.stderr.count("\n") == 1 and not (out / "runs").exists()
    finally:
        lock.release(out)
    assert not (out / lock.LOCK_FILE).exists()


def test_two_compares_into_one_folder_race(tmp_path):
    """Both orders happen here by chance: whichever loses the lock is refused (exit 2) or, started after the
    winner finished, reuses its run (exit 0); the folder always ends complete."""
    out = tmp_path / "shared-out"
    command = [sys.executable, "-m", "perturbmerge.cli", "compare", "--methods", "seq-lora", "--seeds", "0", *RUN,
               "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    codes = [(child.wait(timeout=600), child.stderr.read()) for child in children]
    assert sorted(code for code, _ in codes)[0] == 0, codes
    for code, err in codes:
        assert code in (0, 2) and "Traceback" not in err, err[-2000:]
        if code == 2:
            assert "is being written by process" in err
    results = json.loads((out / "runs" / "seq-lora-seed0" / "results.json").read_text())
    assert results["method"] == "seq-lora" and (out / "summary.md").is_file()
    assert not (out / lock.LOCK_FILE).exists()


def test_resume_of_a_run_that_is_still_running_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--method", "seq-lora", *RUN, "--out", str(out)]) == 0
    (out / "results.json").unlink()  # pretend it is still going, and someone holds it
    child = _holder(out)
    try:
        assert main(["run", "--resume", str(out), "--quiet"]) == 2
        assert f"is being written by process {child.pid}" in capsys.readouterr().err
    finally:
        _release(child)


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / lock.LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone", "since": "yesterday"}))
    assert lock.held_by_other(out) is None
    assert main(["compare", "--methods", "seq-lora", "--seeds", "0", *RUN, "--out", str(out)]) == 0
    assert not (out / lock.LOCK_FILE).exists()


def test_the_lock_is_reentrant_within_a_process_and_released_once(tmp_path):
    lock.acquire(tmp_path)
    lock.acquire(tmp_path)
    lock.release(tmp_path)
    assert (tmp_path / lock.LOCK_FILE).exists()
    lock.release(tmp_path)
    assert not (tmp_path / lock.LOCK_FILE).exists()
    with pytest.raises(KeyError):
        lock.release(tmp_path)


# ---- checkpoint integrity --------------------------------------------------------------------------------------

@pytest.fixture
def interrupted(tmp_path) -> Path:
    """A run with two checkpoints, killed (here: its results removed) before it finished: resume from either."""
    out = tmp_path / "run"
    assert main(["run", "--method", "pm-lora", *RUN_WITH_STEPS, "--set", "checkpoint.keep_final=true",
                 "--out", str(out)]) == 0
    reference = json.loads((out / "results.json").read_text())
    (out / "results.json").unlink()
    (out / "report.md").unlink()
    # the final checkpoint and its predecessor (a step checkpoint inside the last task) are both kept
    assert len(list((out / FOLDER).glob("ckpt-*"))) == 2
    (out.parent / "reference.json").write_text(json.dumps(reference))
    return out


def _state(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())


def _edit_state(folder: Path, key: str, edit, reseal: bool = True) -> None:
    """Change one entry of state.json; `reseal` rewrites the manifest too (a checkpoint consistent with its
    manifest but malformed inside), else the edit is what a flipped bit or a hand edit would leave."""
    document = _state(folder)
    for pair in document["state"]["__dict__"]:
        if pair[0] == key:
            pair[1] = edit(pair[1])
    (folder / "state.json").write_text(json.dumps(document))
    if reseal:
        write_manifest(folder, CHECKPOINT_FORMAT)


@pytest.mark.parametrize("damage", ["batch+1", "digit-flip", "invalid-json", "no-manifest"])
def test_an_edited_state_json_is_refused_with_the_previous_checkpoint_offered(interrupted, capsys, damage):
    """Issue 51: before the manifest, an in-range edit of state.json (a position, a counter) resumed with exit 0
    and another accuracy matrix. Now every file of a checkpoint is covered by MANIFEST.json, checked first."""
    folder = latest_checkpoint(interrupted)
    state = folder / "state.json"
    if damage == "batch+1":
        _edit_state(folder, "position", lambda p: {"__dict__": [[k, v + 1 if k == "batch" else v]
                                                                for k, v in p["__dict__"]]}, reseal=False)
    elif damage == "digit-flip":  # one bit of one digit of the step counter: '"step": 12' -> '"step": 13'
        text = state.read_text()
        at = text.index('"step"')
        digit = next(i for i in range(at, len(text)) if text[i].isdigit())
        state.write_text(text[:digit] + chr(ord(text[digit]) ^ 0x01) + text[digit + 1:])
    elif damage == "invalid-json":
        state.write_text(state.read_text()[:-20])
    else:
        (folder / "MANIFEST.json").unlink()
    assert main(["run", "--resume", str(interrupted), "--quiet"]) == 2
    message = capsys.readouterr().err.strip()
    expected = "no MANIFEST.json" if damage == "no-manifest" else "state.json fails its integrity check"
    assert expected in message and len(message.splitlines()) == 1 and "--from-checkpoint ckpt-" in message


def test_a_flipped_bit_is_refused_and_the_previous_checkpoint_is_offered(interrupted, capsys):
    folder = latest_checkpoint(interrupted)
    tensors = folder / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-100] ^= 0x01  # one bit of a stored weight
    tensors.write_bytes(bytes(data))
    assert main(["run", "--resume", str(interrupted), "--quiet"]) == 2
    message = capsys.readouterr().err.strip()
    previous = sorted(p.name for p in (interrupted / FOLDER).glob("ckpt-*"))[0]
    assert "fails its integrity check" in message and str(tensors.name) in message
    assert f"--from-checkpoint {previous}" in message and len(message.splitlines()) == 1
    assert main(["run", "--resume", str(interrupted), "--quiet", "--from-checkpoint", previous]) == 0
    resumed = json.loads((interrupted / "results.json").read_text())
    reference = json.loads((interrupted.parent / "reference.json").read_text())
    assert resumed["accuracy_matrix"] == reference["accuracy_matrix"]  # bit-identical
    assert resumed["alphas"] == reference["alphas"] and resumed["resumed_from"]["done"] is False


@pytest.mark.parametrize("damage", ["0xff", "header-shape"])
def test_damaged_tensor_files_are_refused(interrupted, capsys, damage):
    tensors = latest_checkpoint(interrupted) / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    if damage == "0xff":
        data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    else:  # a shape in the JSON header transposed: [a, b] -> [b, a], same byte length
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        name = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2
                    and v["shape"][0] != v["shape"][1])
        header[name]["shape"] = header[name]["shape"][::-1]
        text = json.dumps(header, separators=(",", ":")).encode().ljust(header_len)
        data[8:8 + header_len] = text
    tensors.write_bytes(bytes(data))
    assert main(["run", "--resume", str(interrupted), "--quiet"]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and ("integrity check" in message or "not a valid safetensors" in message)


@pytest.mark.parametrize("edit, expected", [
    (("position", lambda p: {"__dict__": [[k, 99 if k == "task" else v] for k, v in p["__dict__"]]}),
     "outside this run's 3 tasks"),
    (("step", lambda s: "abc"), "step 'abc' is not a non-negative integer"),
    (("config", lambda c: []), "config is not a mapping"),
    (("rng", lambda r: {"__dict__": [[k, v[:2] if k == "python" else v] for k, v in r["__dict__"]]}),
     "random-number-generator states are incomplete"),
])
def test_malformed_state_json_is_refused_in_one_line(interrupted, capsys, edit, expected):
    _edit_state(latest_checkpoint(interrupted), *edit)
    assert main(["run", "--resume", str(interrupted), "--quiet"]) == 2
    message = capsys.readouterr().err.strip()
    assert expected in message and len(message.splitlines()) == 1 and "--from-checkpoint ckpt-" in message


def test_a_checkpoint_of_format_1_without_a_manifest_still_resumes(interrupted):
    """Checkpoints written before the manifest (format 1: the tensors' sha256 in state.json) are still read."""
    folder = latest_checkpoint(interrupted)
    document = _state(folder)
    document["format"] = "perturbmerge-checkpoint-1"
    (folder / "state.json").write_text(json.dumps(document))
    (folder / "MANIFEST.json").unlink()
    assert main(["run", "--resume", str(interrupted), "--quiet"]) == 0
    reference = json.loads((interrupted.parent / "reference.json").read_text())
    assert json.loads((interrupted / "results.json").read_text())["accuracy_matrix"] == reference["accuracy_matrix"]


@pytest.mark.parametrize("latest", ["garbage", "directory", "missing-folder", "binary"])
def test_a_broken_latest_is_an_error_not_a_restart(interrupted, capsys, latest):
    pointer = interrupted / FOLDER / "LATEST"
    if latest == "garbage":
        pointer.write_text("not a checkpoint name\n")
    elif latest == "directory":
        pointer.unlink()
        pointer.mkdir()
    elif latest == "missing-folder":
        pointer.write_text("ckpt-000999\n")
    else:
        pointer.write_bytes(b"\xff\xfe\x00")
    assert main(["run", "--resume", str(interrupted), "--quiet"]) == 2
    message = capsys.readouterr().err.strip()
    assert "does not name a checkpoint of this run" in message and "--from-checkpoint ckpt-" in message
    assert not (interrupted / "results.json").exists()


def test_from_checkpoint_must_name_one_of_the_runs_checkpoints(interrupted, capsys):
    assert main(["run", "--resume", str(interrupted), "--quiet", "--from-checkpoint", "ckpt-000777"]) == 2
    assert "is not a checkpoint of" in capsys.readouterr().err
    assert main(["run", "--method", "seq-lora", *RUN, "--from-checkpoint", "x"]) == 2
    assert "only applies with --resume" in capsys.readouterr().err


# ---- the finishing sequence, signals, a full disk ----------------------------------------------------------------

def test_a_run_killed_before_its_report_gets_it_from_resume_or_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--method", "seq-lora", *RUN, "--out", str(out)]) == 0
    for name in ("report.md", "acc_all_seen.png", "summary.json"):
        (out / name).unlink()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert "writing its missing report" in capsys.readouterr().err
    assert (out / "report.md").is_file() and (out / "acc_all_seen.png").is_file()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.md").is_file()
    assert main(["run", "--resume", str(out), "--quiet"]) == 2  # report present: nothing left to do
    assert "already finished" in capsys.readouterr().err


def test_report_rewrites_a_comparison_and_refuses_other_folders(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "seq-lora", "--seeds", "0", *RUN, "--out", str(out)]) == 0
    before = json.loads((out / "summary.json").read_text())
    (out / "summary.md").unlink()
    assert main(["report", str(out)]) == 0
    after = json.loads((out / "summary.json").read_text())
    assert after["methods"] == before["methods"] and (out / "summary.md").is_file()
    assert main(["report", str(tmp_path)]) == 2
    assert "holds neither results.json nor runs/" in capsys.readouterr().err


def test_compare_over_a_results_json_that_is_not_a_run(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "seq-lora", "--seeds", "0", *RUN, "--out", str(out)]) == 0
    (out / "runs" / "seq-lora-seed0" / "results.json").write_text("[]")
    assert main(["compare", "--methods", "seq-lora", "--seeds", "0", *RUN, "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert "is not the results of a perturbmerge run" in message and len(message.splitlines()) == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_before_the_first_checkpoint_clean_up_like_ctrl_c(tmp_path, monkeypatch, capsys, signum):
    from perturbmerge.learner import ContinualLearner

    original = ContinualLearner.train_task

    def signalled(self, task, resume=None):
        os.kill(os.getpid(), signum)
        time.sleep(1)  # the handler raises inside this sleep
        return original(self, task, resume)

    monkeypatch.setattr(ContinualLearner, "train_task", signalled)
    before = signal.getsignal(signum)
    out = tmp_path / "run"
    assert main(["run", "--method", "seq-lora", *RUN, "--out", str(out)]) == 128 + signum
    assert f"stopped by {signal.Signals(signum).name}" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written blocks a re-run
    monkeypatch.setattr(ContinualLearner, "train_task", original)
    assert main(["run", "--method", "seq-lora", *RUN, "--out", str(out)]) == 0
    assert signal.getsignal(signum) is before  # main() restores the handlers it installed


def _full_disk(real, path_of, when, partial: bool = False):
    """`real` failing with ENOSPC on the calls `when(count, path)` accepts (after writing part of the file when
    `partial`), as a full disk does; `path_of(args)` is the file a call writes."""
    calls = [0]

    def write(*args, **kwargs):
        calls[0] += 1
        path = Path(path_of(args))
        if when(calls[0], path):
            if partial:
                path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(*args, **kwargs)

    return write


def test_a_full_disk_at_a_checkpoint_removes_partial_files_and_resume_works_after(tmp_path, monkeypatch, capsys):
    from perturbmerge import checkpoint

    reference = tmp_path / "reference"
    assert main(["run", "--method", "pm-lora", *RUN_WITH_STEPS, "--out", str(reference)]) == 0
    monkeypatch.setattr(checkpoint, "save_file", _full_disk(checkpoint.save_file, lambda args: args[1],
                                                            lambda n, path: n == 3, partial=True))
    out = tmp_path / "run"
    assert main(["run", "--method", "pm-lora", *RUN_WITH_STEPS, "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert "No space left on device" in message and "--resume" in message and len(message.splitlines()) == 1
    assert not list((out / FOLDER).glob(".*partial*"))  # no partial checkpoint left behind
    monkeypatch.undo()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["accuracy_matrix"] == json.loads((reference / "results.json").read_text())["accuracy_matrix"]


@pytest.mark.parametrize("at", ["results.json", "plot"])
def test_a_full_disk_at_the_end_gives_one_line_and_resume_finishes(tmp_path, monkeypatch, capsys, at):
    from perturbmerge import io, report, runner

    out = tmp_path / "run"
    if at == "results.json":
        monkeypatch.setattr(runner, "atomic_write_json", _full_disk(
            io.atomic_write_json, lambda args: args[0], lambda n, path: path.name == "results.json"))
    else:
        monkeypatch.setattr(report, "atomic_write_bytes", _full_disk(
            io.atomic_write_bytes, lambda args: args[0], lambda n, path: True))
    assert main(["run", "--method", "seq-lora", *RUN, "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert "No space left on device" in message and len(message.splitlines()) == 1
    if at == "results.json":  # the final checkpoint is kept: resume writes results.json without training
        assert f"cannot write '{out / 'results.json'}'" in message and f"--resume {out}" in message
    else:
        assert f"{out / 'results.json'} is written" in message and f"`perturbmerge report {out}`" in message
    assert (out / "results.json").exists() == (at == "plot")
    monkeypatch.undo()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert (out / "results.json").is_file() and (out / "report.md").is_file()


def test_a_full_disk_before_the_first_checkpoint_does_not_offer_a_resume_of_a_removed_folder(tmp_path, monkeypatch,
                                                                                              capsys):
    """Issue 51: the folder of a run that never got a checkpoint is removed, so the message says to run again."""
    from perturbmerge import checkpoint

    monkeypatch.setattr(checkpoint, "save_file", _full_disk(checkpoint.save_file, lambda args: args[1],
                                                            lambda n, path: True, partial=True))
    out = tmp_path / "run"
    assert main(["run", "--method", "pm-lora", *RUN_WITH_STEPS, "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert "No space left on device" in message and len(message.splitlines()) == 1
    assert "--resume" not in message and "run the same command again" in message and "was removed" in message
    assert not out.exists()


def test_a_report_that_cannot_be_written_names_it_and_the_way_on(tmp_path, capsys):
    """Issue 51: report.md standing as a folder named a temporary file and offered a --resume that failed alike."""
    out = tmp_path / "run"
    assert main(["run", "--method", "seq-lora", *RUN, "--out", str(out)]) == 0
    (out / "report.md").unlink()
    (out / "report.md").mkdir()  # something else took the report's name
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--quiet"]) == 2  # resume only writes the missing report
    lines = capsys.readouterr().err.strip().splitlines()
    errors, message = [line for line in lines if line.startswith("perturbmerge: error")], lines[-1]
    assert errors == [message] and "a folder stands there; move it away" in message
    assert f"{out / 'report.md'} cannot be written" in message and ".tmp" not in message
    (out / "report.md").rmdir()
    assert main(["report", str(out)]) == 0 and (out / "report.md").is_file()


def test_lock_errors_are_user_errors():
    with pytest.raises(UserError, match="cannot lock"):
        lock.acquire("/proc/definitely-not-here")


# ---- runs that finish but mean nothing are flagged --------------------------------------------------------------

@pytest.mark.parametrize("lr, expected", [("1e6", "is at or above chance level (ln 5 = 1.609)"),
                                          ("1e-300", "the task vector is exactly zero")])
def test_meaningless_runs_are_flagged_in_results_report_and_stderr(tmp_path, capsys, lr, expected):
    out = tmp_path / "run"
    assert main(["run", "--method", "pm-lora", *RUN, "--set", f"lr={lr}", "--out", str(out)]) == 0
    assert expected in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert any(expected in w for w in results["warnings"])
    assert "## Warnings" in (out / "report.md").read_text()


def test_a_healthy_run_has_no_warnings(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--method", "pm-lora", *RUN, "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["warnings"] == []
    assert "## Warnings" not in (out / "report.md").read_text()


def test_data_fetch_into_a_data_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "data").write_text("x")
    assert main(["data", "fetch", "wordnet", "--data-dir", str(tmp_path / "data")]) == 2
    message = capsys.readouterr().err.strip()
    assert "is a file, not a folder" in message and len(message.splitlines()) == 1
