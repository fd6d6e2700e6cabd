"""Predict: apply a trained classifier or segmenter to every image under a folder, prepared
as in training."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radflow.core import folders, imaging, volumes
from radflow.data.preprocess import prepare_image
from radflow.learning import label_shift
from radflow.learning.calibration import decide
from radflow.learning.classifier import predict_probs
from radflow.learning.models import load_model

log = logging.getLogger(__name__)


def image_files(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every DICOM / PNG / JPEG / NIfTI file under root, sorted, and the entries refused
    (links outside the folder, pipes, undecodable names: folders.walk) with the reason."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} not found")
    walk = folders.walk(root)
    return [p for p in walk.files if imaging.detect_format(p)], walk.refused


def _prepared(path: Path, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | str:
    """(source pixels, model-ready image), or why this file cannot be predicted."""
    try:
        pixels = imaging.load_pixels(path)
        return pixels, prepare_image(pixels, meta["modality"], meta["preprocess"])
    except imaging.ImageReadError as exc:
        return str(exc)
    except MemoryError:
        raise
    except Exception as exc:  # one unreadable file gets its error row; the others go on
        return f"cannot be read ({imaging.first_line(exc)})"


def predict_folder(model_dir: Path, root: Path, adapt_prevalence: bool = False) -> pd.DataFrame:
    """One row per image: path, one prob_<class> column per class, the predicted label
    (at the operating threshold chosen on validation for binary models).

    Unreadable images get a row with an `error` and no probabilities, so none is lost.
    adapt_prevalence: estimate the folder's class mix from its own probabilities and
    reweight them to it (learning.label_shift) before deciding; the estimate is recorded in
    `batch_prior_<class>` columns.
    """
    model, meta = load_model(model_dir)
    if meta["task"] != "classifier":
        raise ValueError(f"{model_dir} is a {meta['task']}; predict needs a classifier")
    classes = meta["classes"]
    images, refused = image_files(root)
    paths: list[Path | str] = [*images, *(shown for shown, _ in refused)]
    arrays: list[np.ndarray | None] = []
    errors: list[str] = []
    for path in images:
        ready = _prepared(path, meta)
        arrays.append(None if isinstance(ready, str) else ready[1])
        errors.append(ready if isinstance(ready, str) else "")
    arrays.extend(None for _ in refused)
    errors.extend(reason for _, reason in refused)
    ok = [i for i, a in enumerate(arrays) if a is not None]
    probs = np.full((len(paths), len(classes)), np.nan)
    if ok:
        probs[ok] = predict_probs(
            model, np.stack([arrays[i] for i in ok]),
            temperature=meta.get("temperature", 1.0), tta=meta.get("tta", False),
        )  # fmt: skip
    table = pd.DataFrame({"path": [str(p) for p in paths]})
    if adapt_prevalence and ok:
        adapted = _adapted(probs[ok], meta, model_dir)
        probs[ok] = adapted.probs
        for i, name in enumerate(classes):
            table[f"batch_prior_{name}"] = adapted.prior[i]
    for i, name in enumerate(classes):
        table[f"prob_{name}"] = probs[:, i]
    decided = decide(np.nan_to_num(probs), meta.get("threshold"))
    table["pred_label"] = [
        classes[d] if e == "" else "" for d, e in zip(decided, errors, strict=True)
    ]
    table["error"] = errors
    return table


def _adapted(probs: np.ndarray, meta: dict[str, Any], model_dir: Path) -> label_shift.Adapted:
    if not meta.get("val_prior"):
        raise ValueError(
            f"{model_dir}/meta.json records no val_prior (trained before it was recorded): "
            "retrain the classifier to adapt predictions to a batch's prevalence"
        )
    adapted = label_shift.adapt_to_batch(probs, np.asarray(meta["val_prior"]))
    log.info(
        "predict: batch prevalence %s (validation %s), %d EM iterations%s",
        np.round(adapted.prior, 3).tolist(),
        np.round(meta["val_prior"], 3).tolist(),
        adapted.iterations,
        "" if adapted.converged else ", not converged",
    )
    return adapted


# ------------------------------------------------------------------------- segmenter

MASK_TABLE = "masks.csv"


@dataclass
class Segmented:
    """One input image's prediction on its own pixel grid, ready for export."""

    rel: str  # path relative to the images folder
    stem: str  # rel without the image suffix: the outputs are stem + .png/.nii.gz/.seg.dcm
    mask: np.ndarray | None  # bool (rows, columns) on the input's grid; None on error
    header: Any = None  # the DICOM header (pydicom Dataset) when the input is DICOM


def output_stem(rel: str) -> str:
    """The relative path without its image suffix (IMG1.dcm -> IMG1, a.nii.gz -> a)."""
    lower = rel.lower()
    for suffix in (".nii.gz", ".nii", ".dcm", ".dicom", *imaging.RASTER_SUFFIXES):
        if lower.endswith(suffix):
            return rel[: -len(suffix)]
    return rel


def segment_folder(
    model_dir: Path, root: Path, batch: int = 16
) -> Iterator[tuple[dict[str, Any], Segmented]]:
    """Segment every image under root, prepared as in training; post-processed on the model
    grid, then mapped back onto each image's own pixel grid.

    Yields (CSV row, Segmented) per image: path, mask (the PNG's relative path),
    tumour (0/1), tumour_pixels, tumour_fraction (of the image), max_prob (highest pixel
    probability), confidence (mean probability inside the predicted mask; for an empty
    mask 1 - max_prob, the confidence that there is none), error (unreadable input; no
    mask then).
    """
    from radflow.learning import segmentation

    model, meta = load_model(model_dir)
    if meta["task"] != "segmenter":
        raise ValueError(f"{model_dir} is a {meta['task']}; this needs a segmenter")
    paths, refused = image_files(root)
    for shown, reason in refused:
        yield _error_row(os.path.relpath(shown, root), reason)
    stems: dict[str, str] = {}
    for path in paths:
        rel = path.relative_to(root).as_posix()
        stem = output_stem(rel)
        if stem in stems:
            raise ValueError(
                f"{rel} and {stems[stem]} would write the same mask {stem}.png; "
                "rename one or predict the folders apart"
            )
        stems[stem] = rel
    threshold = float(segmentation.settings(meta)["postprocess"]["threshold"])
    context = segmentation.context_slices(meta)
    for group, why in slice_groups(paths, root, context, batch):
        if why:
            for path in group:
                yield _error_row(path.relative_to(root).as_posix(), why)
            continue
        ready = []
        for path in group:
            rel = path.relative_to(root).as_posix()
            done = _prepared(path, meta)
            if isinstance(done, str):
                yield _error_row(rel, done)
                continue
            header = None
            if imaging.detect_format(path) == "dicom":  # read fine just above
                header = imaging.read_dicom(path, pixels=False)
            ready.append((rel, done[0].shape, header, done[1]))
        if not ready:
            continue
        images = np.stack([r[3] for r in ready])
        if context:  # one volume, in slice order: neighbours are the next readable slices
            images = volumes.stack(images, volumes.window(len(ready), context))
        keep, probs = segmentation.predict_masks(model, images, meta)
        for (rel, shape, header, _), kept, prob in zip(ready, keep, probs, strict=True):
            mask = segmentation.restore_geometry(prob, kept, shape, threshold)
            inside = prob[kept]
            max_prob = float(prob.max())
            stem = output_stem(rel)
            row = {
                "path": rel,
                "mask": f"{stem}.png",
                "tumour": int(mask.any()),
                "tumour_pixels": int(mask.sum()),
                "tumour_fraction": float(mask.mean()),
                "max_prob": max_prob,
                "confidence": float(inside.mean()) if inside.size else 1.0 - max_prob,
                "error": "",
            }
            yield row, Segmented(rel, stem, mask, header)


def _error_row(rel: str, error: str) -> tuple[dict[str, Any], Segmented]:
    empty = dict.fromkeys(("tumour", "tumour_pixels", "tumour_fraction", "max_prob", "confidence"))
    row = {"path": rel, "mask": "", **empty, "error": error}
    return row, Segmented(rel, output_stem(rel), None)


TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$")


def slice_groups(
    paths: list[Path], root: Path, context: int, batch: int
) -> Iterator[tuple[list[Path], str]]:
    """The files in the groups they are predicted in, each with "" or why it cannot be.

    Without context: batches in path order. With context slices: one group per volume in
    slice order; a DICOM volume is its series (ordered by ImagePositionPatient, else
    InstanceNumber), a raster's volume is its folder and file name before a trailing
    number (`case7/slice_12.png`: volume `case7/slice_`, slice 12)."""
    if not context:
        for start in range(0, len(paths), batch):
            yield paths[start : start + batch], ""
        return
    found: dict[str, list[tuple[float, Path]]] = {}
    unordered = []
    for path in paths:
        volume, position = _slice_place(path, root)
        if volume is None:
            unordered.append(path)
        else:
            found.setdefault(volume, []).append((position, path))
    for volume in sorted(found):
        yield [path for _, path in sorted(found[volume])], ""
    if unordered:
        yield (
            unordered,
            (
                f"the model reads {context} neighbouring slice(s) either side, but this file's "
                "place in its volume is unknown: name slices <volume>_<number>.png, or give "
                "DICOM files with ImagePositionPatient or InstanceNumber"
            ),
        )


def _slice_place(path: Path, root: Path) -> tuple[str | None, float]:
    if imaging.detect_format(path) == "dicom":
        try:
            header = imaging.read_dicom(path, pixels=False)
            position = imaging.slice_position(header)
            series = str(getattr(header, "SeriesInstanceUID", "") or path.parent)
            return (f"dicom:{series}", float(position)) if position else (None, 0.0)
        except MemoryError:
            raise
        except Exception:
            return f"unreadable:{path}", 0.0  # reading it again reports why
    if imaging.detect_format(path) == "nifti":
        return None, 0.0  # a volume of its own, read as its middle slice
    match = TRAILING_NUMBER.match(output_stem(path.relative_to(root).as_posix()))
    return (f"file:{match.group(1)}", float(match.group(2))) if match else (None, 0.0)
