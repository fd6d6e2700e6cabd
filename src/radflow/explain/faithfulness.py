"""Faithfulness of explanation maps: deletion and insertion curves against a random-order
baseline (Petsiuk et al., RISE, 2018), localisation against the lesion (pointing game,
energy inside), and the per-method summary and ranking written as faithfulness.json.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radflow.core.lesions import boxes_to_mask
from radflow.explain.methods import blur, eval_mode, model_device


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
    with eval_mode(model):
        x = x.to(model_device(model))
        if baseline == "mean":
            fill = torch.full_like(x, float(x.mean()))
        elif baseline == "blur":
            fill = blur(x)
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
