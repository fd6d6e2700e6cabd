"""Pictures of the explain stage: a heatmap over its image (with the lesion outlined) for
each explained case, and the case browser's small thumbnails. (Segmentation mask overlays
have their own renderer in radflow.evaluation.render.)"""

from __future__ import annotations

import hashlib
import io
import re

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _mpl_text(text: str) -> str:
    """Matplotlib treats $...$ as mathtext (and fails on unbalanced $): print it literally."""
    return text.replace("$", r"\$")


def heatmap_overlay_png(
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
