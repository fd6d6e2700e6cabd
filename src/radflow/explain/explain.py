"""Explanation stage: saliency maps for a classifier, their overlays and a faithfulness score.

One entry point, :func:`explain`, dispatches to the methods in :data:`EXPLAINERS`
(Grad-CAM, Grad-CAM++, saliency, integrated gradients, LIME, SHAP). Every map is (B, H, W)
float32 in [0, 1] at the model's input resolution, 1 = most evidence *for* the target
class. Randomised methods are seeded from a local generator state, so the same seed gives
the same map and the caller's global RNG state is left alone. The model is explained in
eval mode and its previous mode is restored afterwards; no hooks are left on it.

explanations.json (written by the CLI next to the overlay PNGs) is a list of
:class:`ExplanationRecord`::

    [{"image_id": str,        # split/predictions image_id
      "method": str,          # a key of EXPLAINERS
      "file": str,            # overlay PNG, relative to explanations.json's folder
      "label": str,           # true class name
      "pred_label": str,      # predicted class name = the class explained
      "prob": float,          # model probability of pred_label
      "deletion_auc": float,  # see deletion_auc; lower = more faithful
      "insertion_auc": float, # see insertion_auc; higher = more faithful
      "random_deletion_auc": float,   # the same curves for random pixel orders
      "random_insertion_auc": float,  #   (the baseline every method must beat)
      "pointing_hit": bool | None,    # lesion cases only (see pointing_game), else null
      "energy_in_lesion": float | None}]

faithfulness.json summarises the records per method (:func:`summarise`), ranked.
cases.json lists the case browser's thumbnails (:func:`case_thumbnail`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from radflow.core.lesions import boxes_to_mask


class ExplanationRecord(TypedDict):
    """One row of explanations.json."""

    image_id: str
    method: str
    file: str
    label: str
    pred_label: str
    prob: float
    deletion_auc: float
    insertion_auc: float
    random_deletion_auc: float
    random_insertion_auc: float
    pointing_hit: bool | None
    energy_in_lesion: float | None


Explainer = Callable[[nn.Module, torch.Tensor, list[int], int, int], np.ndarray]


# --------------------------------------------------------------------------- plumbing


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Explain in eval mode (BatchNorm/Dropout fixed), then restore the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch and numpy's global RNG (captum draws from both), then restore them."""
    devices = [device] if device.type == "cuda" else []
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        np.random.set_state(numpy_state)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Per-image scaling of non-negative evidence to [0, 1]; an all-zero map stays zero."""
    maps = np.nan_to_num(np.clip(maps.astype(np.float64), 0.0, None))
    peak = maps.reshape(maps.shape[0], -1).max(axis=1)
    scale = np.where(peak > 0, peak, 1.0)
    return (maps / scale[:, None, None]).astype(np.float32)


def _blur(images: torch.Tensor) -> torch.Tensor:
    """Strong Gaussian blur: keeps coarse intensity, removes the detail a model might use."""
    size = images.shape[-1]
    sigma = max(size / 16.0, 1.0)
    kernel = int(2 * round(3 * sigma) + 1)
    kernel = min(kernel, 2 * ((min(images.shape[-2:]) - 1) // 2) + 1)
    return gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


# The module whose output forward_features returns: timm EfficientNet / MobileNet, ResNet.
FEATURE_LAYERS = ("bn2", "layer4")


def cam_layer_for(setting: str, meta: dict[str, Any]) -> str:
    """explain.cam_layer for one model: "auto" becomes "features" when lesion attention
    trained the model, because that training kept the map of exactly that layer on the lesion
    (Cheng boxes: pointing 0.78 there against 0.18 on blocks[-2], BENCHMARKS.md)."""
    if setting == "auto" and float(meta.get("lesion_attention") or 0) > 0:
        return "features"
    return setting


def find_target_layer(model: nn.Module, name: str = "auto") -> nn.Module:
    """Grad-CAM layer: a module by name; "features": the last feature layer (the input of
    the pooling head, FEATURE_LAYERS); or "auto": the second-to-last block stage of a timm
    EfficientNet (7x7 at 224 px), else the last nn.Conv2d.

    Measured on the demo MRI and the Cheng tumour boxes (BENCHMARKS.md): maps from
    ``conv_head`` are dominated by the background; ``blocks[-2]`` points at lesions far more
    often and is at least as faithful by deletion and insertion. "Last" is the order in
    ``model.modules()``, which is forward order for timm and torchvision classifiers.
    """
    if name == "features":
        for attr in FEATURE_LAYERS:
            if isinstance(getattr(model, attr, None), nn.Module):
                return getattr(model, attr)
        raise ValueError(
            f"explain.cam_layer features: the model has none of {', '.join(FEATURE_LAYERS)}; "
            "name its last feature module instead"
        )
    if name != "auto":
        try:
            return model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"explain.cam_layer {name!r} is not a module of the model") from exc
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) >= 2:
        return blocks[-2]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no nn.Conv2d layer for Grad-CAM")
    return convs[-1]


# ---------------------------------------------------------------------------- methods


def _cam(
    cam_class: str, model: nn.Module, images: torch.Tensor, targets: list[int], layer: str
) -> np.ndarray:
    """A pytorch-grad-cam method on find_target_layer(model, layer), hooks always released."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = getattr(pytorch_grad_cam, cam_class)(
        model=model, target_layers=[find_target_layer(model, layer)]
    )
    try:  # not `with`: GradCAM.__exit__ swallows IndexError
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    finally:
        cam.activations_and_grads.release()
    return _normalise(np.asarray(maps))


def _cam_method(cam_class: str) -> Callable[..., np.ndarray]:
    """An explainer for one pytorch-grad-cam class (seed and num_samples are not used)."""

    def run(
        model: nn.Module,
        images: torch.Tensor,
        targets: list[int],
        seed: int,
        num_samples: int,
        layer: str = "auto",
    ) -> np.ndarray:
        return _cam(cam_class, model, images, targets, layer)

    return run


_gradcam = _cam_method("GradCAM")
_gradcampp = _cam_method("GradCAMPlusPlus")


def _integrated_gradients(
    model: nn.Module, images: torch.Tensor, targets: list[int], seed: int, num_samples: int
) -> np.ndarray:
    """Captum IntegratedGradients from a blurred copy (keeps coarse anatomy) to the image.

    ``num_samples`` is the number of Riemann steps; positive attributions are evidence.
    """
    from captum.attr import IntegratedGradients

    inputs = images.clone().requires_grad_(True)
    attr = IntegratedGradients(model).attribute(
        inputs,
        baselines=_blur(images),
        target=targets,
        n_steps=max(int(num_samples), 8),
        internal_batch_size=32,
    )
    return _normalise(attr.detach().sum(dim=1).cpu().numpy())


def _saliency(
    model: nn.Module, images: torch.Tensor, targets: list[int], seed: int, num_samples: int
) -> np.ndarray:
    from captum.attr import Saliency

    inputs = images.clone().requires_grad_(True)
    grads = Saliency(model).attribute(inputs, target=targets, abs=True)
    return _normalise(grads.detach().amax(dim=1).cpu().numpy())


def _shap(
    model: nn.Module, images: torch.Tensor, targets: list[int], seed: int, num_samples: int
) -> np.ndarray:
    """Captum GradientShap; baselines = a zero image (the normalised mean) and a blur."""
    from captum.attr import GradientShap

    explainer = GradientShap(model)
    blurred = _blur(images)
    maps = []
    for i, target in enumerate(targets):
        image = images[i : i + 1].clone().requires_grad_(True)
        baselines = torch.cat([torch.zeros_like(image), blurred[i : i + 1]])
        with _seeded(seed + i, images.device):
            attr = explainer.attribute(
                image, baselines=baselines, target=target, n_samples=num_samples, stdevs=0.05
            )
        maps.append(attr.detach().sum(dim=1)[0].cpu().numpy())
    return _normalise(np.stack(maps))


def _lime_segments(image_rgb: np.ndarray) -> np.ndarray:
    """SLIC superpixels on the grey view: deterministic, about 64 regions."""
    from skimage.segmentation import slic

    return slic(image_rgb[..., 0], n_segments=64, compactness=0.1, channel_axis=None, start_label=0)


def _lime(
    model: nn.Module, images: torch.Tensor, targets: list[int], seed: int, num_samples: int
) -> np.ndarray:
    """lime_image on a min-max scaled 3-channel view; hidden superpixels get the image mean."""
    from lime import lime_image

    maps = []
    for i, target in enumerate(targets):
        grey = images[i, 0].detach().cpu().double().numpy()
        low, span = float(grey.min()), float(np.ptp(grey)) or 1.0
        view = np.repeat(((grey - low) / span)[..., None], 3, axis=2)

        def classify(batch: np.ndarray, low: float = low, span: float = span) -> np.ndarray:
            x = torch.from_numpy(batch[..., 0] * span + low).float()[:, None]
            with torch.no_grad():
                return F.softmax(model(x.to(images.device)), dim=1).cpu().numpy()

        explainer = lime_image.LimeImageExplainer(random_state=seed + i)
        with contextlib.redirect_stderr(io.StringIO()):  # lime's unconditional tqdm bar
            result = explainer.explain_instance(
                view,
                classify,
                labels=(target,),
                top_labels=None,
                hide_color=float(view.mean()),
                num_samples=num_samples,
                batch_size=32,
                segmentation_fn=_lime_segments,
                random_seed=seed + i,
            )
        weights = dict(result.local_exp[target])
        segments = result.segments
        lut = np.array([weights.get(s, 0.0) for s in range(segments.max() + 1)])
        maps.append(lut[segments])
    return _normalise(np.stack(maps))


CAM_METHODS = ("gradcam", "gradcampp")

EXPLAINERS: dict[str, Explainer] = {
    "gradcam": _gradcam,
    "gradcampp": _gradcampp,
    "saliency": _saliency,
    "integrated_gradients": _integrated_gradients,
    "lime": _lime,
    "shap": _shap,
}


def explain(
    model: nn.Module,
    images: torch.Tensor,
    targets: list[int],
    method: str,
    seed: int,
    *,
    num_samples: int = 64,
    cam_layer: str = "auto",
) -> np.ndarray:
    """Saliency maps (B, H, W) in [0, 1] for images (B, 1, H, W), one target class each.

    ``images`` are normalised as the model expects. ``num_samples`` is LIME's number of
    perturbations, SHAP's number of baseline/noise draws and integrated gradients' number
    of steps (ignored by the others); ``cam_layer`` is the Grad-CAM(++) layer
    (:func:`find_target_layer`).
    """
    if method not in EXPLAINERS:
        raise ValueError(f"unknown explanation method {method!r}; choose from {sorted(EXPLAINERS)}")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (B, 1, H, W), got {tuple(images.shape)}")
    if len(targets) != images.shape[0]:
        raise ValueError(f"{len(targets)} targets for {images.shape[0]} images")
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    with _eval_mode(model):
        images = images.detach().float().to(_device(model))
        with torch.no_grad():
            n_classes = model(images[:1]).shape[1]
        bad = [t for t in targets if not 0 <= int(t) < n_classes]
        if bad:
            raise ValueError(f"targets {bad} outside the model's {n_classes} classes")
        targets = [int(t) for t in targets]
        with _seeded(seed, images.device):
            if method in CAM_METHODS:
                return EXPLAINERS[method](model, images, targets, seed, num_samples, cam_layer)
            return EXPLAINERS[method](model, images, targets, seed, num_samples)


# ---------------------------------------------------------------------- faithfulness


def _curve(
    model: nn.Module,
    image: torch.Tensor,
    target: int,
    heatmap: np.ndarray,
    steps: int,
    mode: str,
    baseline: str,
) -> np.ndarray:
    """Target probability as the top-ranked pixels are deleted (or inserted), steps+1 points."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    x = image.detach().float().reshape(1, 1, *image.shape[-2:])
    heatmap = np.asarray(heatmap)
    if heatmap.shape != tuple(x.shape[-2:]):
        raise ValueError(f"heatmap {heatmap.shape} does not match image {tuple(x.shape[-2:])}")
    with _eval_mode(model):
        x = x.to(_device(model))
        if baseline == "mean":
            fill = torch.full_like(x, float(x.mean()))
        elif baseline == "blur":
            fill = _blur(x)
        else:
            raise ValueError(f"baseline must be 'mean' or 'blur', got {baseline!r}")
        n_pixels = x[0, 0].numel()
        order = torch.from_numpy(np.argsort(-heatmap.ravel(), kind="stable").copy())
        rank = torch.empty(n_pixels, dtype=torch.long)
        rank[order] = torch.arange(n_pixels)
        counts = torch.round(torch.linspace(0, n_pixels, steps + 1)).long()
        chosen = (rank[None, :] < counts[:, None]).reshape(steps + 1, 1, *x.shape[-2:])
        chosen = chosen.to(x.device)
        batch = torch.where(chosen, fill, x) if mode == "deletion" else torch.where(chosen, x, fill)
        probs = []
        with torch.no_grad():
            for chunk in batch.split(32):
                probs.append(F.softmax(model(chunk), dim=1)[:, target].cpu())
    return torch.cat(probs).double().numpy()


def deletion_auc(
    model: nn.Module,
    image: torch.Tensor,
    target: int,
    heatmap: np.ndarray,
    steps: int = 20,
    *,
    baseline: str = "mean",
) -> float:
    """Area under the target probability as the most salient pixels are deleted first.

    ``image`` is (1, H, W) or (H, W), normalised as the model expects; pixels are replaced,
    in order of decreasing heatmap, by the image mean (``baseline="mean"``) or a strongly
    blurred copy (``"blur"``) in ``steps`` equal chunks. The curve starts at the intact
    image's probability; the area is over the deleted fraction in [0, 1]. Lower = the map
    points at pixels the model really relies on (Petsiuk et al., RISE, 2018).
    """
    curve = _curve(model, image, target, heatmap, steps, "deletion", baseline)
    return float(np.trapezoid(curve, dx=1.0 / steps))


def insertion_auc(
    model: nn.Module,
    image: torch.Tensor,
    target: int,
    heatmap: np.ndarray,
    steps: int = 20,
    *,
    baseline: str = "blur",
) -> float:
    """Area under the target probability as the most salient pixels are inserted first.

    Starts from a strongly blurred copy (``baseline="blur"``, as in RISE) or the image mean
    and puts the original pixels back in order of decreasing heatmap. Higher = the map
    finds the evidence sooner.
    """
    curve = _curve(model, image, target, heatmap, steps, "insertion", baseline)
    return float(np.trapezoid(curve, dx=1.0 / steps))


def random_baseline(
    model: nn.Module,
    image: torch.Tensor,
    target: int,
    seed: int,
    n_orders: int = 3,
    steps: int = 20,
) -> dict[str, float]:
    """Mean deletion and insertion AUC over ``n_orders`` random pixel orders.

    A map is only informative if it beats this: deletion lower, insertion higher.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(image.shape[-2:])
    deletion, insertion = [], []
    for _ in range(n_orders):
        heat = rng.random(shape)
        deletion.append(deletion_auc(model, image, target, heat, steps))
        insertion.append(insertion_auc(model, image, target, heat, steps))
    return {"deletion_auc": float(np.mean(deletion)), "insertion_auc": float(np.mean(insertion))}


def _tolerance_pixels(shape: tuple[int, ...], tolerance: float) -> int:
    """Tolerance as a fraction of the image side (0.03 of 128 px = 4 px)."""
    return int(round(float(tolerance) * max(shape)))


def pointing_game(heatmap: np.ndarray, mask: np.ndarray, tolerance: float = 0.03) -> bool | None:
    """Is the heatmap's maximum inside the lesion (grown by ``tolerance`` x image side)?

    Every pixel that attains the maximum counts (a flat-topped map is not penalised for
    which of its peak pixels argmax would pick); a hit means one of them is inside.
    None when the mask is empty or the map is all zero (no point to play).
    """
    from scipy.ndimage import binary_dilation

    heatmap, mask = np.asarray(heatmap, dtype=float), np.asarray(mask).astype(bool)
    if heatmap.shape != mask.shape:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} differ")
    if not mask.any() or not np.any(heatmap > 0):
        return None
    radius = _tolerance_pixels(mask.shape, tolerance)
    if radius > 0:
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        mask = binary_dilation(mask, structure=(yy**2 + xx**2) <= radius**2)
    peaks = heatmap >= heatmap.max()
    return bool(np.any(peaks & mask))


def energy_in_lesion(heatmap: np.ndarray, mask: np.ndarray) -> float | None:
    """Fraction of the map's total relevance inside the lesion (Score-CAM's energy game).

    None when the mask is empty or the map all zero. A uniform map scores the lesion's
    area fraction, so compare with that (``mask.mean()``).
    """
    heatmap, mask = np.asarray(heatmap, dtype=float), np.asarray(mask).astype(bool)
    if heatmap.shape != mask.shape:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} differ")
    total = float(np.clip(heatmap, 0, None).sum())
    if not mask.any() or total <= 0:
        return None
    return float(np.clip(heatmap, 0, None)[mask].sum() / total)


def pointing_game_boxes(
    heatmap: np.ndarray, boxes: np.ndarray, tolerance: float = 0.03
) -> bool | None:
    """:func:`pointing_game` with the lesion given as boxes (cx, cy, w, h) in pixels."""
    return pointing_game(heatmap, boxes_to_mask(np.shape(heatmap), boxes), tolerance)


def energy_in_boxes(heatmap: np.ndarray, boxes: np.ndarray) -> float | None:
    """:func:`energy_in_lesion` with the lesion given as boxes (cx, cy, w, h) in pixels."""
    return energy_in_lesion(heatmap, boxes_to_mask(np.shape(heatmap), boxes))


def _mean(values: list) -> float | None:
    defined = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    return float(np.mean(defined)) if defined else None


def summarise(records: list[dict]) -> list[dict]:
    """Per-method faithfulness summary, best first (faithfulness.json).

    For each method: mean deletion and insertion AUC, the same for random orders, their
    gains over random (``deletion_gain`` = random - method, ``insertion_gain`` = method -
    random; positive = better than random), ``score`` = insertion - deletion (the AUC
    difference; higher = more faithful), the pointing-game hit rate and mean energy inside
    the lesion over the cases that have a lesion (``n_localised``; null when none), and
    ``rank`` (1 = best by score, ties by pointing hit rate).
    """
    methods: dict[str, list[dict]] = {}
    for record in records:
        methods.setdefault(record["method"], []).append(record)
    rows = []
    for method, items in methods.items():
        hits = [r.get("pointing_hit") for r in items if r.get("pointing_hit") is not None]
        deletion = _mean([r["deletion_auc"] for r in items])
        insertion = _mean([r.get("insertion_auc") for r in items])
        rnd_del = _mean([r.get("random_deletion_auc") for r in items])
        rnd_ins = _mean([r.get("random_insertion_auc") for r in items])

        def diff(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else a - b

        rows.append(
            {
                "method": method,
                "n": len(items),
                "deletion_auc": deletion,
                "insertion_auc": insertion,
                "random_deletion_auc": rnd_del,
                "random_insertion_auc": rnd_ins,
                "deletion_gain": diff(rnd_del, deletion),
                "insertion_gain": diff(insertion, rnd_ins),
                "score": diff(insertion, deletion),
                "n_localised": len(hits),
                "pointing_hit_rate": float(np.mean(hits)) if hits else None,
                "energy_in_lesion": _mean([r.get("energy_in_lesion") for r in items]),
            }
        )

    def key(row: dict) -> tuple:
        score = row["score"] if row["score"] is not None else -np.inf
        hit = row["pointing_hit_rate"] if row["pointing_hit_rate"] is not None else -np.inf
        return (-score, -hit, row["method"])

    rows.sort(key=key)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


# --------------------------------------------------------------------------- overlays


def _mpl_text(text: str) -> str:
    """Matplotlib treats $...$ as mathtext (and fails on unbalanced $): print it literally."""
    return text.replace("$", r"\$")


def overlay_png(
    image01: np.ndarray, heatmap01: np.ndarray, title: str, lesion: np.ndarray | None = None
) -> bytes:
    """PNG of the greyscale image with the heatmap (jet, semi-transparent) and a colour bar.

    ``lesion`` (a binary mask of the same shape), when given, is outlined in white.

    Built on a bare Figure + Agg canvas (no pyplot state) and saved without metadata, so
    the same input gives the same bytes.
    """
    image01, heatmap01 = np.asarray(image01, dtype=float), np.asarray(heatmap01, dtype=float)
    if image01.ndim != 2 or image01.shape != heatmap01.shape:
        raise ValueError(f"image {image01.shape} and heatmap {heatmap01.shape} must be equal 2-D")
    fig = Figure(figsize=(4.0, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(image01, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    heat = ax.imshow(heatmap01, cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0, interpolation="nearest")
    if lesion is not None and np.asarray(lesion).any():
        ax.contour(np.asarray(lesion, dtype=float), levels=[0.5], colors="white", linewidths=1)
    fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.04, label="relevance")
    ax.set_title(_mpl_text(title), fontsize=9)
    ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight")
    return buffer.getvalue()


def overlay_filename(image_id: str, method: str) -> str:
    """A safe PNG name, unique per (image_id, method) even when sanitising merges ids."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(image_id)).strip("._")[:60] or "image"
    digest = hashlib.sha256(str(image_id).encode()).hexdigest()[:8]
    return f"{safe}_{digest}_{method}.png"


def choose_cases(predictions: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to n test cases, taken in turn from each true label; the same for the same seed."""
    shuffled = predictions.sample(frac=1.0, random_state=seed)
    turn = shuffled.groupby("label").cumcount()
    picked = shuffled.assign(_turn=turn).sort_values(["_turn", "label"], kind="stable").head(n)
    return picked.drop(columns="_turn").reset_index(drop=True)


def case_thumbnail(image01: np.ndarray, heatmap01: np.ndarray | None, size: int = 96) -> bytes:
    """Small PNG for the case browser: the image, and beside it the heatmap blended in (jet).

    No figure machinery (fast for every test case); deterministic bytes.
    """
    from matplotlib import colormaps
    from PIL import Image

    image01 = np.clip(np.asarray(image01, dtype=float), 0.0, 1.0)
    grey = np.repeat(image01[..., None], 3, axis=2)
    panels = [grey]
    if heatmap01 is not None:
        heat = np.clip(np.asarray(heatmap01, dtype=float), 0.0, 1.0)
        if heat.shape != image01.shape:
            raise ValueError(f"image {image01.shape} and heatmap {heat.shape} differ")
        colour = colormaps["jet"](heat)[..., :3]
        panels.append(0.6 * grey + 0.4 * colour)
    tiles = [
        Image.fromarray((p * 255).round().astype(np.uint8)).resize((size, size), Image.BILINEAR)
        for p in panels
    ]
    canvas = Image.new("RGB", (size * len(tiles) + 2 * (len(tiles) - 1), size), "white")
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (i * (size + 2), 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@dataclass
class ExplainedCases:
    records: list[dict[str, Any]]  # explanations.json rows (ExplanationRecord + scores)
    overlays: dict[str, bytes]  # file name -> overlay PNG
    faithfulness: dict[str, Any]  # faithfulness.json: per-method summary and settings


def explain_cases(
    model: nn.Module,
    images: np.ndarray,
    lesions: dict[int, np.ndarray],
    predictions: pd.DataFrame,
    classes: list[str],
    cfg: dict[str, Any],
    seed: int,
) -> ExplainedCases:
    """Every configured method on a seeded sample of test cases, each map with its scores.

    images are the uint8 processed arrays; lesions maps array index -> boolean lesion mask
    (:func:`lesions_from_index`). Localisation (pointing game, energy) is scored only for
    lesion cases explained as their own (true) class, where "inside the lesion" is the right
    answer.
    """
    from radflow.learning.models import normalise_batch

    sample = choose_cases(predictions, cfg["samples"], seed)
    idx = sample["array_index"].astype(int).to_numpy()
    x = normalise_batch(torch.from_numpy(images[idx]))
    targets = [classes.index(p) for p in sample["pred_label"]]
    steps, tolerance = cfg["faithfulness_steps"], cfg["pointing_tolerance"]
    baselines = [
        random_baseline(model, x[j], targets[j], seed + j, cfg["random_orders"], steps)
        for j in range(len(idx))
    ]

    def lesion(j: int, row: Any) -> np.ndarray | None:
        if row.pred_label != row.label:
            return None
        return lesions.get(int(idx[j]))

    records: list[dict[str, Any]] = []
    overlays: dict[str, bytes] = {}
    for method in cfg["methods"]:
        maps = explain(
            model, x, targets, method, seed,
            num_samples=cfg["num_samples"], cam_layer=cfg.get("cam_layer", "auto"),
        )  # fmt: skip
        for j, row in enumerate(sample.itertuples(index=False)):
            prob = float(getattr(row, f"prob_{row.pred_label}"))
            mask = lesion(j, row)
            record = {
                "image_id": row.image_id,
                "method": method,
                "label": row.label,
                "pred_label": row.pred_label,
                "prob": prob,
                "deletion_auc": deletion_auc(model, x[j], targets[j], maps[j], steps),
                "insertion_auc": insertion_auc(model, x[j], targets[j], maps[j], steps),
                "random_deletion_auc": baselines[j]["deletion_auc"],
                "random_insertion_auc": baselines[j]["insertion_auc"],
                "pointing_hit": None if mask is None else pointing_game(maps[j], mask, tolerance),
                "energy_in_lesion": None if mask is None else energy_in_lesion(maps[j], mask),
            }
            title = (
                f"{method}: truth {row.label}, predicted {row.pred_label} ({prob:.2f})\n"
                f"deletion {record['deletion_auc']:.3f}, insertion {record['insertion_auc']:.3f}"
            )
            name = overlay_filename(row.image_id, method)
            overlays[name] = overlay_png(images[idx[j]] / 255.0, maps[j], title, mask)
            records.append({**record, "file": name})
    faithfulness = {
        "methods": summarise(records),
        "steps": steps,
        "random_orders": cfg["random_orders"],
        "pointing_tolerance": tolerance,
        "n_cases": int(len(idx)),
    }
    return ExplainedCases(records, overlays, faithfulness)


def case_browser(
    model: nn.Module,
    images: np.ndarray,
    predictions: pd.DataFrame,
    classes: list[str],
    limit: int,
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """Thumbnails (image | Grad-CAM of the predicted class) of up to `limit` test cases, the
    misclassified first: the cases.json rows and the PNGs by file name (under cases/)."""
    from radflow.learning.models import normalise_batch

    table = predictions.copy()
    table["correct"] = table["label"] == table["pred_label"]
    table["confidence"] = [float(r[f"prob_{r['pred_label']}"]) for _, r in table.iterrows()]
    table = table.sort_values(["correct", "image_id"], kind="stable").head(limit)
    idx = table["array_index"].astype(int).to_numpy()
    if not len(idx):
        return [], {}
    x = normalise_batch(torch.from_numpy(images[idx]))
    maps = explain(model, x, [classes.index(p) for p in table["pred_label"]], "gradcam", 0)
    rows, pngs = [], {}
    for j, row in enumerate(table.itertuples(index=False)):
        name = "cases/" + overlay_filename(row.image_id, "case")
        pngs[name] = case_thumbnail(images[idx[j]] / 255.0, maps[j])
        rows.append(
            {
                "image_id": row.image_id,
                "label": row.label,
                "pred_label": row.pred_label,
                "confidence": float(row.confidence),
                "correct": bool(row.correct),
                "file": name,
            }
        )
    return rows, pngs
