"""The `radflow` command: argument parsing and file I/O; the work happens in stage modules."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radflow.core import codegraph
from radflow.core import manifest as manifest_mod
from radflow.core import params as params_mod
from radflow.core.fileio import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    read_json,
    write_json,
)

log = logging.getLogger("radflow")

Handler = Callable[[argparse.Namespace, dict[str, Any]], None]


# ----------------------------------------------------------------------------- helpers


def _replace_dir(target: Path, build: Callable[[Path], None]) -> None:
    """Build a directory output beside target and swap it in: complete or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.save(fh, array)

    atomic_write(path, write)


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run the stage that writes it first")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _load_processed(data_dir: Path) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    index = _read_csv(data_dir / "index.csv")
    index["array_index"] = index["array_index"].astype(int)
    index["has_mask"] = index["has_mask"].astype(int)
    return np.load(data_dir / "images.npy"), np.load(data_dir / "masks.npy"), index


def _read_split(path: Path) -> pd.DataFrame:
    split = _read_csv(path)
    split["array_index"] = split["array_index"].astype(int)
    return split


# ----------------------------------------------------------------------------- stages


def cmd_demo(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from radflow.data import demo

    out = Path(args.out)
    labels: list[pd.DataFrame] = []
    _replace_dir(
        out,
        lambda tmp: labels.append(demo.generate_cohort(tmp, params["demo"], params["seed"])),
    )
    log.info("demo cohort: %d images written to %s", len(labels[0]), out)


def cmd_ingest(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from radflow.data import ingest, sources

    data = params["data"]
    result = ingest.ingest(sources.from_params(data))
    out = Path(args.out)
    manifest_mod.write(result.manifest, out / "manifest.csv")
    _write_csv(out / "quarantine.csv", result.quarantine)
    log.info(
        "ingest: %d inputs -> %d in manifest + %d quarantined (%s); %d hidden files passed over",
        result.inputs,
        len(result.manifest),
        len(result.quarantine),
        out / "quarantine.csv",
        result.hidden,
    )


def cmd_anonymise(args: argparse.Namespace, params: dict[str, Any] | None) -> None:
    from radflow.data import anonymise

    flags = {name: getattr(args, name, None) for name in anonymise.OVERRIDABLE}
    settings, key, origin = anonymise.settings_from(params, flags, os.environ)
    log.info("anonymise: pseudonymisation key from %s", origin)
    log.info("anonymise: %s", anonymise.describe(settings))
    out = Path(args.out)
    if args.input:
        summary = anonymise.anonymise_tree(Path(args.input), out, key, settings)
        log.info(
            "anonymise: %d files -> %d de-identified + %d quarantined (%s)",
            summary.files_seen,
            summary.written,
            summary.quarantined,
            summary.quarantine_path,
        )
        return
    if not args.manifest:
        raise ValueError("give --manifest (pipeline) or --in DIR (a DICOM tree)")
    source = manifest_mod.read(args.manifest)

    def build(tmp: Path) -> None:
        new, audit, quarantine = anonymise.anonymise_manifest(source, tmp, key, settings)
        anonymise.write_tables(tmp, _relocate(new, tmp, out), audit, quarantine)
        log.info(
            "anonymise: %d images -> %d de-identified + %d quarantined",
            len(source),
            len(new),
            len(quarantine),
        )

    _replace_dir(out, build)


def _relocate(frame: pd.DataFrame, tmp: Path, final: Path) -> pd.DataFrame:
    """Paths written while building in tmp must name the final directory."""
    frame = frame.copy()
    for column in ("source_path", "mask_path"):
        frame[column] = [str(final / Path(p).relative_to(tmp)) if p else "" for p in frame[column]]
    return frame


def cmd_preprocess(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from radflow.core import imaging
    from radflow.data import preprocess

    rows = manifest_mod.for_modality(manifest_mod.read(args.manifest), args.modality)
    if rows.empty:
        raise SystemExit(
            f"radflow preprocess: no {args.modality} images in {args.manifest}; "
            "remove the modality from params.yaml modalities or add data"
        )
    done = preprocess.build_arrays(
        rows, params["preprocess"], imaging.load_pixels, imaging.load_mask
    )
    out = Path(args.out)
    _write_csv(out / "quarantine.csv", manifest_mod.quarantine_frame(done.quarantine))
    log.info(
        "preprocess %s: %d images -> %d arrays (%d with masks) + %d quarantined (%s)",
        args.modality,
        len(rows),
        len(done.index),
        int(done.index["has_mask"].sum()),
        len(done.quarantine),
        out / "quarantine.csv",
    )
    if done.index.empty:
        raise SystemExit(
            f"radflow preprocess: none of the {len(rows)} {args.modality} images could be "
            f"prepared; the reasons are in {out / 'quarantine.csv'}"
        )
    _save_npy(out / "images.npy", done.images)
    _save_npy(out / "masks.npy", done.masks)
    _write_csv(out / "index.csv", done.index)


def cmd_split(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from radflow.data import split

    index = _read_csv(Path(args.index))
    sp = params["split"]
    table = split.assign_splits(index, sp["val_fraction"], sp["test_fraction"], params["seed"])
    _write_csv(Path(args.out), table)
    counts = table.groupby(["split", "label"]).size().to_dict()
    log.info("split %s: %s", args.modality, counts)
    missing = split.missing_cells(table)
    if missing:
        log.warning(
            "split %s: no image for %s; some metrics will be undefined",
            args.modality,
            ", ".join(missing),
        )


def cmd_train(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from radflow.learning import models, threads

    threads.pin(params["train"]["num_threads"])
    images, masks, index = _load_processed(Path(args.data))
    split = _read_split(Path(args.split))
    out = Path(args.out)
    # Survives an interruption beside the output; removed once the model is written.
    checkpoint = out.parent / f".{out.name}.checkpoint.pt"
    if args.task == "classifier":
        from radflow.learning import classifier as task
    else:
        from radflow.learning import segmentation as task
    trained = task.train_stage(images, masks, index, split, params, args.modality, checkpoint)
    if trained.state is None:  # nothing to learn from: an untrained marker
        _replace_dir(out, lambda tmp: write_json(tmp / "meta.json", trained.meta))
        return
    _replace_dir(
        out, lambda tmp: models.save_model(tmp, trained.state, trained.meta, trained.history)
    )
    checkpoint.unlink(missing_ok=True)
    log.info(
        "train %s %s: best epoch %d, val metric %.3f",
        args.modality,
        args.task,
        trained.meta["best_epoch"],
        trained.meta["best_val_metric"],
    )


def cmd_evaluate(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from radflow.data import ingest
    from radflow.evaluation import stage
    from radflow.learning import models, threads

    threads.pin(params["train"]["num_threads"])
    data_dir, split_path = Path(args.data), Path(args.split)
    images, masks, index = _load_processed(data_dir)
    split = _read_split(split_path)
    classifier, meta = models.load_model(Path(args.models) / "classifier")
    seg_dir = Path(args.models) / "segmenter"
    seg_meta = read_json(seg_dir / "meta.json")
    segmenter = None
    if seg_meta.get("trained", False):
        segmenter, seg_meta = models.load_model(seg_dir)
    inputs = {
        str(path): ingest.sha256_file(path)
        for path in (
            data_dir / "images.npy",
            data_dir / "masks.npy",
            data_dir / "index.csv",
            split_path,
        )
    }
    result = stage.evaluate(
        args.modality, images, masks, index, split, classifier, meta, segmenter, seg_meta,
        params, inputs,
    )  # fmt: skip
    out = Path(args.out)
    for name, table in result.tables.items():
        _write_csv(out / name, table)
    _replace_dir(
        out / "overlays",
        lambda tmp: [
            atomic_write(tmp / Path(n).name, lambda p, data=png: p.write_bytes(data))
            for n, png in result.overlays.items()
        ],
    )
    metrics = result.metrics
    write_json(out / "metrics.json", metrics)
    log.info(
        "evaluate %s: n_test=%d AUC=%s operating point %s",
        args.modality,
        metrics["n_test"],
        metrics["classification"]["auc"]["value"],
        metrics["operating_point"]["rule"],
    )


def cmd_explain(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from radflow.explain import stage
    from radflow.learning import models, threads

    threads.pin(params["train"]["num_threads"])
    images, masks, index = _load_processed(Path(args.data))
    predictions = _read_csv(Path(args.predictions))
    model, meta = models.load_model(args.model)
    result = stage.explain_model(
        model, meta, images, masks, index, predictions, params["explain"], params["seed"]
    )

    def build(tmp: Path) -> None:
        for name, png in result.pngs.items():
            atomic_write(tmp / name, lambda p, data=png: p.write_bytes(data))
        write_json(tmp / "explanations.json", result.records)
        write_json(tmp / "faithfulness.json", result.faithfulness)
        write_json(tmp / "cases.json", result.cases)

    _replace_dir(Path(args.out), build)
    log.info(
        "explain %s: %d overlays; ranking %s",
        args.modality,
        len(result.records),
        ", ".join(f"{r['rank']}. {r['method']}" for r in result.faithfulness["methods"]),
    )


def cmd_report(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from radflow.report import pages

    out = Path(args.out)
    if args.index:
        root = Path(args.evaluation) if args.evaluation else out.parent / "evaluation"
        cards = [
            {"modality": m, "metrics": _maybe_json(root / m / "metrics.json")}
            for m in params["modalities"]
        ]
        from radflow.core import provenance

        context = {
            "params_hash": params_mod.params_hash(params),
            "code_digest": codegraph.digest("report_index"),
            "git_revision": provenance.git_revision(),
            "versions": provenance.versions(),
        }
        atomic_write_text(out, pages.render_index(cards, context))
        log.info("report: index at %s", out.resolve())
        return
    if not (args.modality and args.evaluation and args.explanations and args.models):
        raise ValueError("a modality page needs --modality, --evaluation, --explanations, --models")
    atomic_write_text(out, pages.render_modality_page(_page_context(args, params)))
    log.info("report %s: %s", args.modality, out)


def _maybe_json(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.exists() else None


def _page_context(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    """Everything one modality page shows, read from the stage outputs."""
    from radflow.core import provenance
    from radflow.learning import history

    evaluation, explanations, models_dir = (
        Path(args.evaluation),
        Path(args.explanations),
        Path(args.models),
    )
    rows = read_json(explanations / "explanations.json")
    for row in rows:
        row["png"] = (explanations / row["file"]).read_bytes()
    cases = _maybe_json(explanations / "cases.json") or []
    for case in cases:
        case["png"] = (explanations / case["file"]).read_bytes()
    histories = {
        task: frame
        for task in ("classifier", "segmenter")
        if (frame := history.read(models_dir / task)) is not None
    }
    meta = read_json(models_dir / "classifier" / "meta.json")
    pr_path = evaluation / "pr.csv"
    metrics = read_json(evaluation / "metrics.json")
    overlays = {
        str(case["file"]): (evaluation / case["file"]).read_bytes()
        for case in (metrics.get("segmentation") or {}).get("cases") or []
        if (evaluation / case["file"]).is_file()
    }
    return {
        "modality": args.modality,
        "metrics": metrics,
        "roc": pd.read_csv(evaluation / "roc.csv"),
        "pr": pd.read_csv(pr_path) if pr_path.exists() else None,
        "predictions": _read_csv(evaluation / "predictions.csv"),
        "histories": histories,
        "explanations": rows,
        "faithfulness": _maybe_json(explanations / "faithfulness.json"),
        "cases": cases,
        "meta": meta,
        "segmenter_meta": read_json(models_dir / "segmenter" / "meta.json"),
        "segmentation_overlays": overlays,
        "params": params,
        "git_revision": provenance.git_revision(),
        "code_digest": codegraph.digest("report"),
    }


def cmd_predict(args: argparse.Namespace, params: dict[str, Any] | None) -> None:
    from radflow.learning import predict

    meta_path = Path(args.model) / "meta.json"
    if meta_path.exists() and read_json(meta_path).get("task") == "segmenter":
        _predict_masks(Path(args.model), Path(args.images), Path(args.out))
        return
    table = predict.predict_folder(Path(args.model), Path(args.images), args.adapt_prevalence)
    _write_csv(Path(args.out), table)
    log.info("predict: %d images -> %s", len(table), args.out)


def _predict_masks(model_dir: Path, images: Path, out: Path) -> None:
    """One 0/255 mask PNG and one NIfTI per image (same relative path under out), a DICOM
    SEG beside them for DICOM inputs, and masks.csv (area and confidence per image)."""
    from radflow.core import export
    from radflow.learning import predict

    if out.exists() and any(out.iterdir()) and not (out / predict.MASK_TABLE).exists():
        raise ValueError(f"{out} is a folder with other files; give a new or empty folder")
    label = "lesion"
    rows: list[dict[str, Any]] = []

    def build(tmp: Path) -> None:
        for row, item in predict.segment_folder(model_dir, images):
            row |= {"nifti": "", "dicom_seg": "", "note": ""}
            if item.mask is not None:
                base = tmp / item.stem
                png = export.mask_png(item.mask)
                atomic_write_bytes(base.with_name(base.name + ".png"), png)
                affine = export.nifti_affine(item.header)
                nifti = export.nifti_bytes(item.mask, affine)
                atomic_write_bytes(base.with_name(base.name + ".nii.gz"), nifti)
                row["nifti"] = f"{item.stem}.nii.gz"
                frames = int(getattr(item.header, "NumberOfFrames", 1) or 1)
                if item.header is not None and frames == 1:
                    try:
                        seg = export.dicom_bytes(export.dicom_seg(item.header, item.mask, label))
                    except ValueError as exc:  # e.g. no Frame of Reference in the source
                        row["note"] = f"no DICOM SEG: {exc}"
                    else:
                        atomic_write_bytes(base.with_name(base.name + ".seg.dcm"), seg)
                        row["dicom_seg"] = f"{item.stem}.seg.dcm"
                elif item.header is not None:
                    row["note"] = "no DICOM SEG: multi-frame source (the middle frame was used)"
            rows.append(row)
        columns = ["path", "mask", "nifti", "dicom_seg", "tumour", "tumour_pixels",
                   "tumour_fraction", "max_prob", "confidence", "error", "note"]  # fmt: skip
        table = pd.DataFrame(rows).reindex(columns=columns)
        for column in ("tumour", "tumour_pixels"):  # counts stay integers beside empty rows
            table[column] = table[column].astype("Int64")
        _write_csv(tmp / predict.MASK_TABLE, table)

    _replace_dir(out, build)
    log.info(
        "predict: %d images -> %d masks with a lesion, %d unreadable; %s",
        len(rows),
        sum(1 for r in rows if r.get("tumour") == 1),
        sum(1 for r in rows if r.get("error")),
        out / predict.MASK_TABLE,
    )


def cmd_renamed_profile(args: argparse.Namespace, params: dict[str, Any] | None) -> None:
    """`radflow profile` (before issue 14) fails with the command and path that replace it."""
    old = next((w for w in args.words if w.endswith((".yaml", ".yml"))), "profiles/<name>.yaml")
    raise params_mod.ParamsError(
        "the command is now `radflow overlay`, and the dataset params overlays moved from "
        f"{params_mod.OLD_OVERLAY_DIR}/ to {params_mod.OVERLAY_DIR}/: run `radflow overlay "
        f"{params_mod.OVERLAY_DIR}/{Path(old).name}` instead"
    )


def cmd_overlay(args: argparse.Namespace, params: dict[str, Any] | None) -> None:
    """Print (or run) the `dvc exp run` that applies a params overlay to params.yaml."""
    import shlex
    import subprocess

    params_mod.check_overlay_path(args.overlay)
    overlay = params_mod.read_yaml(Path(args.overlay))
    params_mod.validate(
        params_mod.merge(params_mod.read_yaml(Path(args.params)), overlay),
        f"{args.params} + {args.overlay}",
    )
    command = ["dvc", "exp", "run", *params_mod.dvc_set_args(overlay)]
    if not args.run:
        print(shlex.join(command))
        return
    subprocess.run(command, check=True)


# ----------------------------------------------------------------------------- parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radflow", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, handler: Handler, help_text: str, modality: bool = False):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
        if modality:
            p.add_argument("--modality", required=True, choices=["mri", "ct", "xray"])
        p.set_defaults(handler=handler)
        return p

    p = stage("demo", cmd_demo, "generate the synthetic multi-modality DICOM demo cohort")
    p.add_argument("--out", required=True)
    p = stage("ingest", cmd_ingest, "scan data.raw_dir into a manifest and a quarantine table")
    p.add_argument("--out", required=True, help="folder for manifest.csv and quarantine.csv")
    p = stage("anonymise", cmd_anonymise, "de-identify DICOM (pipeline manifest or a tree)")
    p.add_argument("--manifest", help="manifest.csv from ingest")
    p.add_argument("--in", dest="input", help="a DICOM folder to mirror de-identified")
    p.add_argument("--out", required=True)
    p.add_argument("--key-file", help="pseudonymisation key file (else anonymise.key_env)")
    for name in ("retain_longitudinal_temporal", "retain_patient_characteristics",
                 "retain_device_identity", "retain_institution_identity", "retain_uids",
                 "clean_descriptors"):  # fmt: skip
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, action=argparse.BooleanOptionalAction, help="overrides params")
    p.set_defaults(params="params.yaml" if Path("params.yaml").is_file() else None)
    p = stage("preprocess", cmd_preprocess, "normalise and resize into arrays", modality=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p = stage("split", cmd_split, "patient-grouped stratified train/val/test", modality=True)
    p.add_argument("--index", required=True)
    p.add_argument("--out", required=True)
    p = stage("train", cmd_train, "fine-tune a classifier or a segmenter", modality=True)
    p.add_argument("--task", required=True, choices=["classifier", "segmenter"])
    p.add_argument("--data", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True)
    p = stage("evaluate", cmd_evaluate, "test-set metrics with bootstrap CIs", modality=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--out", required=True)
    p = stage("explain", cmd_explain, "explanation overlays for test images", modality=True)
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--out", required=True)
    p = stage("report", cmd_report, "self-contained HTML report pages")
    p.add_argument("--modality", choices=["mri", "ct", "xray"])
    p.add_argument("--index", action="store_true", help="write the index page")
    p.add_argument("--evaluation")
    p.add_argument("--explanations")
    p.add_argument("--models")
    p.add_argument("--out", required=True)
    p = sub.add_parser(
        "overlay", help="the dvc exp run that applies a params overlay (or --run it)"
    )
    p.add_argument("overlay", help="params/<name>.yaml")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--run", action="store_true", help="run dvc exp run now")
    p.set_defaults(handler=cmd_overlay, params_loaded=False)
    p = sub.add_parser("profile")  # the name of `overlay` before issue 14: an error naming it
    p.add_argument("words", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_renamed_profile, params=None)
    p = sub.add_parser("predict", help="apply a trained model to a folder of images")
    p.add_argument("--model", required=True, help="models/<modality>/classifier or .../segmenter")
    p.add_argument("--images", required=True, help="folder searched recursively")
    p.add_argument(
        "--out",
        required=True,
        help="classifier: CSV, path and one probability per class; segmenter: a folder for "
        "one mask PNG (0/255), NIfTI (and DICOM SEG for DICOM) per image and masks.csv",
    )
    p.add_argument(
        "--adapt-prevalence",
        action="store_true",
        help="classifier: estimate the folder's class mix from its own predictions (EM, "
        "Saerens et al. 2002) and decide on probabilities reweighted to it; recorded in "
        "batch_prior_<class> columns. Assumes only the mix changed (off by default)",
    )
    p.set_defaults(handler=cmd_predict, params=None)
    return parser


READS_DICOM = ("ingest", "anonymise", "preprocess", "predict")


def _quiet_dicom_reader() -> None:
    """pydicom warns of each invalid header value by printing the value, and a value can name
    a patient: radflow validates what it uses itself (imaging.check_dicom_image), so pydicom
    accepts invalid values silently. Its pixel decoders log a traceback for each plugin that
    fails on damaged data; the reason reaches the quarantine table instead."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)


# Errors that carry a message for the user; anything else is a bug and keeps its traceback.
KNOWN_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command in READS_DICOM:  # importing pydicom costs about 0.3 s: only where used
        _quiet_dicom_reader()
    try:
        wants_params = args.params and getattr(args, "params_loaded", True)
        params = params_mod.load(args.params) if wants_params else None
        args.handler(args, params)
    except KNOWN_ERRORS as exc:
        print(f"radflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
