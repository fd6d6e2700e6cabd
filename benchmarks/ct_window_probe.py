"""Benchmark: which CT window and image size let frozen ImageNet features separate the classes?

A linear probe (logistic regression on the pooled features of the packaged, frozen
EfficientNet-Lite0) per HU window, scored by patient-grouped stratified k-fold AUC, repeated
over a few fold shuffles. It takes about 20 s per window on 2 cores, against 4 min for a
5-fold fine-tune, so it screens windows before `real_data.py` confirms one. The images go
through the overlay's adapter and the pipeline's ingest and `prepare_image`, as in training.

    .venv/bin/python benchmarks/ct_window_probe.py --windows 100/300,200/200,50/400
    .venv/bin/python benchmarks/ct_window_probe.py --windows 200/200 --sizes 160,224,320,416

Windows and sizes are chosen on the data at hand: whatever wins here is optimistic by
that selection.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_ct(params: dict) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, int]:
    """HU pixels, labels (class index) and patient codes of the overlay's CT images."""
    from radflow.core import imaging
    from radflow.data import ingest, sources

    result = ingest.ingest(sources.from_params(params["data"]))
    rows = result.manifest[result.manifest["modality"] == "ct"].sort_values("image_id")
    classes = params["data"]["classes"]["ct"]
    pixels = [imaging.load_pixels(row.source_path, row.format) for row in rows.itertuples()]
    labels = rows["label"].map(classes.index).to_numpy()
    _, patients = np.unique(rows["patient_key"].to_numpy(), return_inverse=True)
    return pixels, labels, patients, len(result.quarantine)


def frozen_backbone() -> torch.nn.Module:
    """The packaged ImageNet Lite0 without its head: pooled features, built once."""
    from radflow.learning import models, weights

    model, _ = models.build_classifier(weights.PACKAGED_ARCH, weights.PACKAGED, 2)
    model.reset_classifier(0)
    return model.eval()


def features(
    model: torch.nn.Module,
    pixels: list[np.ndarray],
    window: tuple[float, float],
    size: int,
    pp: dict,
) -> np.ndarray:
    import torch

    from radflow.data import preprocess
    from radflow.learning import models

    pp = pp | {"ct_window": {"center": window[0], "width": window[1]}, "image_size": size}
    images = np.stack([preprocess.prepare_image(p, "ct", pp) for p in pixels])
    with torch.no_grad():
        out = [model(models.normalise_batch(torch.from_numpy(images[i : i + 16])))
               for i in range(0, len(images), 16)]  # fmt: skip
    return torch.cat(out).numpy()


def probe_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> float:
    """Out-of-fold AUC of a standardised, L2-regularised logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = np.zeros(len(y))
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, y, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
        scores[test] = clf.fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    return float(roc_auc_score(y, scores))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--overlay", "--profile", dest="overlay", default=str(ROOT / "params/ct-contrast.yaml"),
        help="params/<name>.yaml (--profile: this option's name before issue 14)",
    )  # fmt: skip
    parser.add_argument("--windows", default="100/300,200/200", help="centre/width,... in HU")
    parser.add_argument("--sizes", default="", help="image sizes in px (default: the overlay's)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--shuffles", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from radflow.core import params as params_mod

    torch.set_num_threads(2)
    start = time.perf_counter()
    os.chdir(ROOT)  # the overlay's ../shared paths are relative to the project root
    params_mod.check_overlay_path(args.overlay)  # profiles/<name>.yaml: names params/<name>.yaml
    params = params_mod.merge(
        params_mod.read_yaml(ROOT / "params.yaml"), params_mod.read_yaml(Path(args.overlay))
    )
    params = params_mod.validate(params, args.overlay)  # with the schema's defaults
    pixels, labels, patients, quarantined = load_ct(params)
    print(
        f"{len(pixels)} CT images of {patients.max() + 1} patients "
        f"({quarantined} quarantined by ingest); linear probe, {args.folds}-fold "
        f"patient-grouped, {args.shuffles} shuffles\n"
    )
    model = frozen_backbone()
    sizes = [int(v) for v in (args.sizes or str(params["preprocess"]["image_size"])).split(",")]
    print("| window (centre/width) | HU range | size | AUC per shuffle | mean |")
    print("|---|---|---|---|---|")
    for item in args.windows.split(","):
        centre, width = (float(v) for v in item.split("/"))
        low, high = centre - width / 2, centre + width / 2
        for size in sizes:
            x = features(model, pixels, (centre, width), size, params["preprocess"])
            aucs = [probe_auc(x, labels, patients, args.folds, s) for s in range(args.shuffles)]
            print(
                f"| {item} | {low:g} to {high:g} | {size} | "
                f"{', '.join(f'{a:.3f}' for a in aucs)} | {np.mean(aucs):.3f} |",
                flush=True,
            )
    print(f"\nwall {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
