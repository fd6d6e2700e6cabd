"""Predict: apply a trained classifier to every image under a folder, prepared as in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from radflow import imaging
from radflow.evaluate import decide
from radflow.models import load_model
from radflow.preprocess import prepare_image
from radflow.train import predict_probs


def image_files(root: Path) -> list[Path]:
    """Every DICOM / PNG / JPEG / NIfTI file under root, sorted."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} not found")
    return sorted(p for p in root.rglob("*") if p.is_file() and imaging.detect_format(p))


def predict_folder(model_dir: Path, root: Path) -> pd.DataFrame:
    """One row per image: path, one prob_<class> column per class, the predicted label
    (at the operating threshold chosen on validation for binary models).

    Unreadable images get a row with an `error` and no probabilities, so none is lost.
    """
    model, meta = load_model(model_dir)
    if meta["task"] != "classifier":
        raise ValueError(f"{model_dir} is a {meta['task']}; predict needs a classifier")
    classes = meta["classes"]
    paths, arrays, errors = image_files(root), [], []
    for path in paths:
        try:
            arrays.append(
                prepare_image(imaging.load_pixels(path), meta["modality"], meta["preprocess"])
            )
            errors.append("")
        except imaging.ImageReadError as exc:
            arrays.append(None)
            errors.append(str(exc))
    ok = [i for i, a in enumerate(arrays) if a is not None]
    probs = np.full((len(paths), len(classes)), np.nan)
    if ok:
        probs[ok] = predict_probs(
            model, np.stack([arrays[i] for i in ok]),
            temperature=meta.get("temperature", 1.0), tta=meta.get("tta", False),
        )  # fmt: skip
    table = pd.DataFrame({"path": [str(p) for p in paths]})
    for i, name in enumerate(classes):
        table[f"prob_{name}"] = probs[:, i]
    decided = decide(np.nan_to_num(probs), meta.get("threshold"))
    table["pred_label"] = [
        classes[d] if e == "" else "" for d, e in zip(decided, errors, strict=True)
    ]
    table["error"] = errors
    return table
