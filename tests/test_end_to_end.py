"""The whole workflow under Snakemake on a tiny demo cohort, then the DVC hand-over."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "demo": {
        "patients_per_modality": 12,
        "max_studies_per_patient": 2,
        "images_per_study": 2,
        "image_size": 96,
        "lesion_fraction": 0.5,
    },
    "preprocess": {"image_size": 64},
    "split": {"val_fraction": 0.25, "test_fraction": 0.25},
    "train": {
        "classifier": {"epochs": 2, "batch_size": 16},
        "segmenter": {"epochs": 2, "batch_size": 8, "channels": [8, 16, 32]},
    },
    "evaluate": {"bootstrap_samples": 50},
    "explain": {"samples": 2, "methods": ["gradcam", "saliency"]},
}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return out


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("project")
    for name in ("Snakefile", "dvc.yaml", ".dvcignore"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "workflow", work / "workflow")
    (work / "src").symlink_to(ROOT / "src")  # dvc.yaml tracks the stage modules as deps
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([str(BIN / "dvc"), "init", "--no-scm", "-q"], work)
    _run([str(BIN / "snakemake"), "--cores", "2"], work)
    return work


def test_workflow_writes_an_index_linking_every_modality_page(project):
    index = (project / "reports/index.html").read_text()
    for modality in ("mri", "ct", "xray"):
        assert f"{modality}.html" in index
        page = (project / f"reports/{modality}.html").read_text()
        assert "AUC" in page and "data:image/png;base64," in page


def test_metrics_are_sane_and_carry_intervals(project):
    for modality in ("mri", "ct", "xray"):
        metrics = json.loads((project / f"reports/evaluation/{modality}/metrics.json").read_text())
        assert metrics["n_test"] > 0
        for name in ("accuracy", "balanced_accuracy", "sensitivity", "specificity"):
            m = metrics["classification"][name]
            assert 0 <= m["value"] <= 1
            assert m["ci_low"] <= m["value"] <= m["ci_high"]


def test_models_record_their_pretrained_origin(project):
    meta = json.loads((project / "models/ct/classifier/meta.json").read_text())
    assert "ImageNet" in meta["weights_origin"] and meta["trained"]


def test_no_planted_identifier_reaches_the_reports(project):
    from radflow.core import imaging

    names = set()
    for path in (project / "data/raw/demo").rglob("*.dcm"):
        ds = imaging.read_dicom(path, pixels=False)
        names |= {str(ds.PatientName), str(ds.PatientID)}
    text = "\n".join(
        p.read_text(errors="ignore")
        for p in (project / "reports").rglob("*")
        if p.is_file() and p.suffix in {".html", ".json", ".csv"}
    )
    assert names and not any(name in text for name in names)


def test_dvc_is_up_to_date_after_snakemake_and_snakemake_after_dvc(project):
    status = _run([str(BIN / "dvc"), "status"], project).stdout
    assert "up to date" in status, status
    repro = _run([str(BIN / "dvc"), "repro"], project).stdout
    assert "didn't change" in repro or "up to date" in repro.lower(), repro
    dry = _run([str(BIN / "snakemake"), "-n"], project).stdout
    assert "Nothing to be done" in dry, dry


def test_predict_scores_a_folder_with_the_trained_model(project):
    _run(
        [str(BIN / "radflow"), "predict", "--model", "models/xray/classifier",
         "--images", "data/raw/demo/xray", "--out", "preds.csv"],
        project,
    )  # fmt: skip
    import pandas as pd

    preds = pd.read_csv(project / "preds.csv", keep_default_na=False)
    assert len(preds) == len(list((project / "data/raw/demo/xray").rglob("*.dcm")))
    assert {"path", "prob_normal", "prob_opacity", "pred_label"} <= set(preds.columns)
    assert (preds["error"] == "").all()
    assert ((preds["prob_normal"] + preds["prob_opacity"]).round(4) == 1).all()


def test_snakemake_report_collects_the_captioned_results(project):
    _run([str(BIN / "snakemake"), "--report", "report.html"], project)
    html = (project / "report.html").read_text(errors="replace")
    for category in ("Reports", "Explanations"):
        assert category in html
    caption = (ROOT / "workflow/report/modality.rst").read_text().split()[:3]
    assert " ".join(caption) in html
