"""Training history in DVCLive's format: written with dvclive.Live into each model directory,
read back for the report, and read by DVC itself (`dvc plots`, `dvc metrics`, `dvc exp show`)
through dvc.yaml's top-level plots and metrics, in a real git clone of the checkout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from project import copy_project, run

from radflow.learning import history

HISTORY = pd.DataFrame(
    {
        "epoch": [1, 2, 3],
        "train_loss": [0.9, 0.5, 0.4],
        "val_loss": [1.0, 0.7, 0.65],
        "val_metric": [float("nan"), 0.8, 0.75],  # NaN: one class in the validation split
        "lr": [1e-3, 5e-4, 0.0],
        "seconds": [1.5, 1.25, 1.0],
    }
)
TASKS = ("classifier", "segmenter")
SERIES = ("train_loss", "val_loss", "val_metric", "lr", "seconds")


def test_history_is_written_in_dvclive_format_and_read_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no git, no DVC: DVCLive only writes its files
    history.write(tmp_path / "m", HISTORY, {"best_epoch": 2, "best_val_metric": 0.8})

    live = tmp_path / "m" / "dvclive"
    assert (live / "plots/metrics/val_loss.tsv").read_text().splitlines() == [
        "step\tval_loss", "1\t1.0", "2\t0.7", "3\t0.65",
    ]  # fmt: skip
    assert sorted(p.stem for p in (live / "plots/metrics").iterdir()) == sorted(SERIES)
    assert json.loads((live / "metrics.json").read_text()) == {
        "train_loss": 0.4, "val_loss": 0.65, "val_metric": 0.75, "lr": 0.0, "seconds": 1.0,
        "step": 3, "best_epoch": 2, "best_val_metric": 0.8,
    }  # fmt: skip
    pd.testing.assert_frame_equal(history.read(tmp_path / "m"), HISTORY)


def test_a_model_directory_without_history_reads_as_none(tmp_path):
    (tmp_path / "segmenter").mkdir()
    (tmp_path / "segmenter" / "meta.json").write_text('{"trained": false}')
    assert history.read(tmp_path / "segmenter") is None


def test_history_refuses_to_make_a_plain_git_repository_a_dvc_project(tmp_path, monkeypatch):
    """dvclive.Live runs `dvc init` in a git repository without DVC; radflow says so instead."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "notes.txt").write_text("not a DVC project\n")
    run(["git", "init", "-q"], repo)
    run(["git", "add", "notes.txt"], repo)
    run(["git", "commit", "-q", "-m", "notes"], repo)
    monkeypatch.chdir(repo)
    with pytest.raises(ValueError, match="would run `dvc init`"):
        history.write(repo / "m", HISTORY, {})
    assert not (repo / ".dvc").exists()
    assert not (repo / "m").exists()


def test_saved_model_directory_holds_the_dvclive_history_not_history_csv(tmp_path, monkeypatch):
    from radflow.learning import models

    monkeypatch.chdir(tmp_path)
    meta = {"task": "classifier", "best_epoch": 2, "best_val_metric": 0.8, "trained": True}
    models.save_model(tmp_path / "m", {}, meta, HISTORY)
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["dvclive", "meta.json", "model.pt"]
    summary = json.loads((tmp_path / "m/dvclive/metrics.json").read_text())
    assert (summary["best_epoch"], summary["best_val_metric"]) == (2, 0.8)


# ------------------------------------------------- DVC reading it in a clone of the checkout


def _trained_models(project: Path) -> list[Path]:
    modalities = yaml.safe_load((project / "params.yaml").read_text())["modalities"]
    dirs = [project / "models" / m / task for m in modalities for task in TASKS]
    trained = [d for d in dirs if json.loads((d / "meta.json").read_text()).get("trained", True)]
    assert trained, "the demo trains models"
    return trained


def _dvc_json(project: Path, *args: str) -> object:
    return json.loads(run(["dvc", *args, "--json"], project).stdout)


def _series(plots: dict, path: str, column: str, rev: str) -> list[tuple[int, float]]:
    """One revision's points of one DVCLive file as `dvc plots` renders it (from dvc.yaml)."""
    (entry,) = plots["data"][path]
    values = entry["content"]["data"]["values"]
    return [(int(v["step"]), float(v[column])) for v in values if v["rev"] == rev]


def _same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    return len(a) == len(b) and all(
        sa == sb and (va == vb or (math.isnan(va) and math.isnan(vb)))
        for (sa, va), (sb, vb) in zip(a, b, strict=True)
    )


def _workspace(rows: list[dict]) -> dict:
    (row,) = [r for r in rows if r["rev"] == "workspace"]
    return row["data"]


@pytest.mark.slow
def test_dvc_plots_show_every_models_per_epoch_series_from_its_dvclive_files(demo_clone):
    plots = _dvc_json(demo_clone, "plots", "show")
    assert not plots.get("errors"), plots.get("errors")
    for model in _trained_models(demo_clone):
        frame = history.read(model)
        assert frame is not None and len(frame) >= 1, model
        expected = list(frame["epoch"])
        for column in SERIES:
            path = f"{model.relative_to(demo_clone).as_posix()}/dvclive/plots/metrics/{column}.tsv"
            shown = _series(plots, path, column, "workspace")
            assert [step for step, _ in shown] == expected, path
            assert _same(shown, list(zip(frame["epoch"], frame[column], strict=True))), path


@pytest.mark.slow
def test_dvc_metrics_and_exp_show_give_each_models_last_epoch_and_the_params(demo_clone):
    (workspace,) = _dvc_json(demo_clone, "metrics", "show").values()  # keyed "" (workspace)
    shown = workspace["data"]
    exp = _workspace(_dvc_json(demo_clone, "exp", "show"))
    params = yaml.safe_load((demo_clone / "params.yaml").read_text())
    assert exp["params"]["params.yaml"]["data"]["train"] == params["train"]
    for model in _trained_models(demo_clone):
        path = f"{model.relative_to(demo_clone).as_posix()}/dvclive/metrics.json"
        on_disk = json.loads((demo_clone / path).read_text())
        meta = json.loads((model / "meta.json").read_text())
        assert on_disk["step"] == history.read(model)["epoch"].iloc[-1]
        assert (on_disk["best_epoch"], on_disk["best_val_metric"]) == (
            meta["best_epoch"], meta["best_val_metric"],
        )  # fmt: skip
        assert shown[path]["data"] == on_disk, path
        assert exp["metrics"][path]["data"] == on_disk, path


@pytest.mark.slow
def test_the_report_page_shows_the_training_curves_it_read_from_dvclive(demo_clone):
    for modality in {m.parent.name for m in _trained_models(demo_clone)}:
        page = (demo_clone / "reports" / f"{modality}.html").read_text()
        assert 'alt="classifier training curves"' in page, modality
        assert "No training history available." not in page, modality


@pytest.mark.slow
def test_an_overlay_run_is_an_experiment_with_its_params_and_its_training_history(
    demo_clone, tmp_path
):
    """`radflow overlay FILE --run` is a `dvc exp run -S ...` of the real (tiny) pipeline: the
    experiment's params, its segmenters' one-epoch metrics and curves come back from DVC."""
    project = copy_project(demo_clone, tmp_path / "radflow")
    before = yaml.safe_load((project / "params.yaml").read_text())["train"]["segmenter"]
    assert before["epochs"] > 1
    (project / "params" / "one-epoch.yaml").write_text("train:\n  segmenter:\n    epochs: 1\n")
    run(["radflow", "overlay", "params/one-epoch.yaml", "--run"], project, timeout=900)

    rows = _dvc_json(project, "exp", "show")
    experiments = [
        rev for row in rows for exp in row.get("experiments") or [] for rev in exp["revs"]
    ]
    assert len(experiments) == 1, [r.get("name") for r in experiments]
    (exp,) = experiments
    segmenter = exp["data"]["params"]["params.yaml"]["data"]["train"]["segmenter"]
    assert segmenter["epochs"] == 1
    assert segmenter["batch_size"] == before["batch_size"]  # the rest of params.yaml stays
    segmenters = [m for m in _trained_models(project) if m.name == "segmenter"]
    assert segmenters
    for model in segmenters:
        path = f"{model.relative_to(project).as_posix()}/dvclive/metrics.json"
        assert exp["data"]["metrics"][path]["data"]["step"] == 1, path

    # the experiment's curves, read from the DVC cache for its revision, beside the workspace's
    name = exp["name"]
    plots = _dvc_json(project, "plots", "diff", name)
    for model in segmenters:
        path = f"{model.relative_to(project).as_posix()}/dvclive/plots/metrics/val_metric.tsv"
        ours = _series(plots, path, "val_metric", name)
        assert [step for step, _ in ours] == [1], path
        assert _same(ours, _series(plots, path, "val_metric", "workspace")), path
