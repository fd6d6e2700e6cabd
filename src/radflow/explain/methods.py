"""Explanation methods: saliency maps for a classifier (Grad-CAM, Grad-CAM++, saliency,
integrated gradients, LIME, SHAP) and the choice of the Grad-CAM layer.

One entry point, :func:`explain`, dispatches to the methods in :data:`EXPLAINERS`. Every
map is (B, H, W) float32 in [0, 1] at the model's input resolution, 1 = most evidence *for*
the target class. Randomised methods are seeded from a local generator state, so the same
seed gives the same map and the caller's global RNG state is left alone. The model is
explained in eval mode and its previous mode is restored afterwards; no hooks are left on
it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

Explainer = Callable[[nn.Module, torch.Tensor, list[int], int, int], np.ndarray]


# --------------------------------------------------------------------------- plumbing


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
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


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters are: inputs and baselines go there too."""
    return next(model.parameters()).device


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Per-image scaling of non-negative evidence to [0, 1]; an all-zero map stays zero."""
    maps = np.nan_to_num(np.clip(maps.astype(np.float64), 0.0, None))
    peak = maps.reshape(maps.shape[0], -1).max(axis=1)
    scale = np.where(peak > 0, peak, 1.0)
    return (maps / scale[:, None, None]).astype(np.float32)


def blur(images: torch.Tensor) -> torch.Tensor:
    """Strong Gaussian blur: keeps coarse intensity, removes the detail a model might use."""
    size = images.shape[-1]
    sigma = max(size / 16.0, 1.0)
    kernel = int(2 * round(3 * sigma) + 1)
    kernel = min(kernel, 2 * ((min(images.shape[-2:]) - 1) // 2) + 1)
    return gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


# The module whose output forward_features returns: timm EfficientNet / MobileNet, ResNet.
FEATURE_LAYERS = ("bn2", "layer4")


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
        baselines=blur(images),
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
    blurred = blur(images)
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
    with eval_mode(model):
        images = images.detach().float().to(model_device(model))
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
