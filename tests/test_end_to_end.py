"""The whole workflow under Snakemake on a tiny demo cohort, in a git clone (the DVC hand-over
is tests/test_cache.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from project import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(demo_clone: Path) -> Path:
    """The user's git clone after `snakemake --cores 2` on the tiny demo (conftest)."""
    return demo_clone


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
    prior = meta["val_prior"]
    assert len(prior) == len(meta["classes"]) and sum(prior) == pytest.approx(1)


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


def test_the_pseudonymisation_key_is_in_no_output_log_or_report(project):
    """Every byte the run wrote (data, models, reports, logs, Snakemake's and DVC's records),
    searched for the key it pseudonymised with, as text and as hex."""
    from radflow.data.anonymise import DEMO_KEY

    forms = (DEMO_KEY, DEMO_KEY.hex().encode())
    written = [
        path
        for top in ("data", "models", "reports", "logs", ".snakemake", ".dvc", "dvclive")
        for path in (project / top).rglob("*")
        if path.is_file()
    ]
    assert len(written) > 100
    leaks = [p for p in written if any(form in p.read_bytes() for form in forms)]
    assert leaks == []


def test_predict_scores_a_folder_with_the_trained_model(project, tmp_path):
    # outputs outside the shared clone, which other modules expect as `git clone` left it
    out = tmp_path / "preds.csv"
    run(
        ["radflow", "predict", "--model", "models/xray/classifier",
         "--images", "data/raw/demo/xray", "--out", str(out)],
        project,
    )  # fmt: skip
    import pandas as pd

    preds = pd.read_csv(out, keep_default_na=False)
    assert len(preds) == len(list((project / "data/raw/demo/xray").rglob("*.dcm")))
    assert {"path", "prob_normal", "prob_opacity", "pred_label"} <= set(preds.columns)
    assert (preds["error"] == "").all()
    assert ((preds["prob_normal"] + preds["prob_opacity"]).round(4) == 1).all()
    adapted_out = tmp_path / "adapted.csv"
    run(
        ["radflow", "predict", "--model", "models/xray/classifier", "--adapt-prevalence",
         "--images", "data/raw/demo/xray", "--out", str(adapted_out)],
        project,
    )  # fmt: skip
    adapted = pd.read_csv(adapted_out, keep_default_na=False)
    prior = adapted[["batch_prior_normal", "batch_prior_opacity"]].iloc[0]
    assert prior.sum() == pytest.approx(1.0) and adapted["path"].tolist() == preds["path"].tolist()


def test_snakemake_report_collects_the_captioned_results(project, tmp_path):
    run(["snakemake", "--report", str(tmp_path / "report.html")], project)
    html = (tmp_path / "report.html").read_text(errors="replace")
    for category in ("Reports", "Explanations"):
        assert category in html
    caption = (ROOT / "workflow/report/modality.rst").read_text().split()[:3]
    assert " ".join(caption) in html
