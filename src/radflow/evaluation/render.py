"""Pictures of the evaluation stage: a predicted mask over its image, for the report's best,
median and worst segmentation cases. (Explanation heatmaps have their own renderer in
radflow.explain.render.)"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def mask_overlay_png(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, scale: int = 2
) -> bytes:
    """The image in grey with the truth outline in green and the prediction in red (overlap
    yellow), upscaled for the report."""
    from skimage.segmentation import find_boundaries

    grey = np.asarray(image, dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    t_edge = find_boundaries(truth, mode="inner")
    p_edge = find_boundaries(pred, mode="inner")
    rgb[t_edge] = [0, 220, 0]
    rgb[p_edge] = [230, 30, 30]
    rgb[t_edge & p_edge] = [240, 220, 0]
    out = Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    if scale > 1:
        out = out.resize((out.width * scale, out.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    out.save(buffer, "PNG")
    return buffer.getvalue()
