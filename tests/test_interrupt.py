"""Interruption and concurrency on the user's git clone (issue 16): `kill -9` of a Snakemake
run during training, then the same command again, resumes from the training checkpoint and
ends with the metrics of an uninterrupted run; a second run in the same folder, Snakemake or
DVC (`dvc status`, `dvc repro`: the same repository lock), stops with a clear message while
the first goes on untouched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from project import BIN, copy_project, run
from project import env as project_env

TARGET = "reports/evaluation/ct/metrics.json"
# Trains the CT classifier again in a built clone: its job is forced, whatever Snakemake makes
# of the files (the training itself resumes from its own checkpoint, not Snakemake).
RETRAIN = ["--forcerun", "train_classifier", "--"]


def _start(command: list[str], work: Path) -> subprocess.Popen[bytes]:
    """A run in its own process group (a terminal's Ctrl-Z / kill reaches all of it)."""
    log = open(work / "first-run.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        command, cwd=work, env=project_env(work), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_kill_9_during_training_then_the_same_command_ends_with_the_same_metrics(
    demo_clone, tmp_path
):
    work = copy_project(demo_clone, tmp_path / "radflow")
    command = ["snakemake", "--cores", "2", *RETRAIN, TARGET]
    first = _start([str(BIN / "snakemake"), *command[1:]], work)
    _wait_for(work / "models/ct/.classifier.checkpoint.pt", first)  # after epoch 1 of 2
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    time.sleep(1)  # the killed group's files are closed
    assert not list((work / "models/ct").glob(".classifier.*/model.pt"))  # never moved in
    again = run(command, work)  # the same command, no --unlock, no --rerun-incomplete
    assert "interrupted Snakemake run" in again.stderr
    log = (work / "logs/train/ct_classifier.log").read_text()
    assert "resuming from" in log and "after epoch 1" in log
    expected = json.loads((demo_clone / TARGET).read_text())
    got = json.loads((work / TARGET).read_text())
    assert got["classification"] == expected["classification"]
    assert not (work / "models/ct/.classifier.checkpoint.pt").exists()


def test_a_second_run_in_the_folder_stops_with_a_clear_message_and_spares_the_first(
    demo_clone, tmp_path
):
    work = copy_project(demo_clone, tmp_path / "radflow")
    # through explanation and report: still running while the second runs are tried
    first = _start([str(BIN / "snakemake"), "--cores", "1", *RETRAIN, "reports/ct.html"], work)
    _wait_for(work / "models/ct/.classifier.checkpoint.pt", first)  # its jobs are running
    # DVC first: `dvc status` takes the same repository lock as `dvc repro`, and would do
    # no harm if it got it
    dvc = run(["dvc", "status"], work, check=False)
    assert dvc.returncode != 0 and "Unable to acquire lock" in dvc.stderr
    second = run(["snakemake", "--cores", "1", *RETRAIN, TARGET], work, check=False)
    assert second.returncode != 0
    assert "cannot be locked" in second.stdout + second.stderr
    assert first.wait(timeout=900) == 0, (work / "first-run.log").read_text()[-3000:]
    expected = json.loads((demo_clone / TARGET).read_text())
    assert json.loads((work / TARGET).read_text())["classification"] == expected["classification"]
