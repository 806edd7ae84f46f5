"""Image-set quality measures: FID, KID and the classifier check of generated images.

FID and KID compare two sets of images through the features of a fixed network. The numbers
depend on that network, so every key this module produces names it: ``fid_inception`` for
torchvision's Inception v3 (2048-d pool features), ``fid_can_cnn`` for the penultimate layer
of the classifier trained on the real crops. Values from different networks are not
comparable, and neither are values from sets of different sizes (FID is biased upwards for
small sets, KID is not).

NOTE: torchvision's Inception v3 weights are not the TensorFlow weights behind published FID
values, so ``fid_inception`` is comparable only with other runs of this module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
from PIL import Image, ImageOps
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def frechet_distance(
    features_a: np.ndarray, features_b: np.ndarray, *, method: str = "auto", eps: float = 1e-6
) -> float:
    """Return the Fréchet distance between Gaussians fitted to two feature sets (N, d).

    FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with means mu and covariances
    S (Heusel et al., 2017).

    ``method="sqrtm"`` takes the matrix square root with ``scipy.linalg.sqrtm``. When that is
    not finite, ``eps`` is added to both diagonals. Imaginary parts from rounding are dropped,
    and a large one raises ``ValueError``. ``method="svd"`` uses the identity
    Tr (S_a S_b)^(1/2) = ||A B^T||_* / sqrt((n_a - 1)(n_b - 1)), with A and B the centred
    feature matrices and ||.||_* the nuclear norm (sum of singular values). It is exact, and
    faster than ``sqrtm`` when a set has fewer samples than dimensions, where the
    covariances are singular. ``"auto"`` picks ``svd`` in that case and ``sqrtm`` otherwise.
    """
    features_a = _check_features(features_a, "features_a", minimum=2)
    features_b = _check_features(features_b, "features_b", minimum=2)
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"feature dimensions differ: {features_a.shape[1]} and {features_b.shape[1]}"
        )
    if method == "auto":
        fewer_samples = min(len(features_a), len(features_b)) < features_a.shape[1]
        method = "svd" if fewer_samples else "sqrtm"
    if method not in ("sqrtm", "svd"):
        raise ValueError(f"unknown FID method {method!r}; valid ones are auto, sqrtm, svd")

    mean_a, mean_b = features_a.mean(axis=0), features_b.mean(axis=0)
    centred_a, centred_b = features_a - mean_a, features_b - mean_b
    trace_a = (centred_a**2).sum() / (len(features_a) - 1)
    trace_b = (centred_b**2).sum() / (len(features_b) - 1)
    if method == "svd":
        singular_values = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False)
        trace_root = singular_values.sum() / np.sqrt((len(features_a) - 1) * (len(features_b) - 1))
    else:
        trace_root = _trace_sqrtm_product(
            np.atleast_2d(np.cov(features_a, rowvar=False)),
            np.atleast_2d(np.cov(features_b, rowvar=False)),
            eps,
        )
    difference = mean_a - mean_b
    value = difference @ difference + trace_a + trace_b - 2 * trace_root
    return float(max(value, 0.0))


def _trace_sqrtm_product(covariance_a: np.ndarray, covariance_b: np.ndarray, eps: float) -> float:
    root = scipy.linalg.sqrtm(covariance_a @ covariance_b)
    if not np.isfinite(root).all():
        logger.info("FID: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(covariance_a.shape[0]) * eps
        root = scipy.linalg.sqrtm((covariance_a + offset) @ (covariance_b + offset))
    if np.iscomplexobj(root):
        largest = float(np.max(np.abs(root.imag)))
        scale = max(1.0, float(np.max(np.abs(root.real))))
        if largest > 1e-3 * scale:
            raise ValueError(f"FID: matrix square root has a large imaginary part ({largest:.3g})")
        root = root.real
    return float(np.trace(root))


def kernel_inception_distance(
    features_a: np.ndarray,
    features_b: np.ndarray,
    *,
    subset_size: int = 100,
    subsets: int = 50,
    seed: int = 0,
) -> tuple[float, float]:
    """Return the mean and standard deviation of KID over random subsets of both sets.

    KID (Bińkowski et al., 2018) is the unbiased estimate of the squared maximum mean
    discrepancy with the polynomial kernel k(x, y) = (x.y / d + 1)^3, d the feature dimension:
    for subsets X, Y of m samples each,
    MMD^2 = [sum_{i!=j} k(x_i, x_j) + sum_{i!=j} k(y_i, y_j)] / (m (m - 1))
            - 2 sum_{i,j} k(x_i, y_j) / m^2.
    Each subset draws ``min(subset_size, len(a), len(b))`` samples without replacement. The
    estimate is unbiased, so it can be slightly negative for identical distributions.
    """
    features_a = _check_features(features_a, "features_a", minimum=2)
    features_b = _check_features(features_b, "features_b", minimum=2)
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"feature dimensions differ: {features_a.shape[1]} and {features_b.shape[1]}"
        )
    m = min(subset_size, len(features_a), len(features_b))
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples, got {m}")
    dimension = features_a.shape[1]
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(subsets):
        x = features_a[rng.choice(len(features_a), m, replace=False)]
        y = features_b[rng.choice(len(features_b), m, replace=False)]
        k_xx = (x @ x.T / dimension + 1) ** 3
        k_yy = (y @ y.T / dimension + 1) ** 3
        k_xy = (x @ y.T / dimension + 1) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        estimates.append(within - 2 * k_xy.sum() / (m * m))
    return float(np.mean(estimates)), float(np.std(estimates))


def _check_features(features: np.ndarray, name: str, *, minimum: int) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"{name} must have shape (N, d), got {features.shape}")
    if len(features) < minimum:
        raise ValueError(f"{name} has {len(features)} samples; at least {minimum} are needed")
    return features


class FeatureExtractor:
    """A frozen network that maps uint8 RGB images (N, H, W, 3) to features and logits.

    ``name`` labels the metric keys (``fid_<name>``). Images are resized to ``input_size``
    with bilinear filtering and normalised with ``mean`` and ``std``. The features are the
    input of the network's last ``nn.Linear`` layer, so ``logits`` are the network's output.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        classes: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.to(device).eval()
        self.name = name
        self.input_size = input_size
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.classes = list(classes) if classes is not None else None
        linear_layers = [module for module in model.modules() if isinstance(module, nn.Linear)]
        if not linear_layers:
            raise ValueError(f"{name}: the network has no nn.Linear layer to take features from")
        self._captured: list[torch.Tensor] = []
        linear_layers[-1].register_forward_hook(
            lambda module, inputs, output: self._captured.append(inputs[0].detach())
        )

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Return (features (N, d), logits (N, classes)) as float64 arrays."""
        features, logits = [], []
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
            batch = batch.to(self.device).permute(0, 3, 1, 2).float() / 255.0
            batch = F.interpolate(batch, size=(self.input_size, self.input_size),
                                  mode="bilinear", align_corners=False, antialias=True)
            self._captured.clear()
            output = self.model((batch - self.mean) / self.std)
            if isinstance(output, tuple):  # Inception v3 in training mode returns aux logits
                output = output[0]
            features.append(torch.flatten(self._captured[-1], 1).double().cpu())
            logits.append(output.double().cpu())
        if not features:
            raise ValueError(f"{self.name}: no images to extract features from")
        return torch.cat(features).numpy(), torch.cat(logits).numpy()


def inception_extractor(
    weights_path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> FeatureExtractor:
    """Build torchvision's Inception v3 from a local state_dict; features are the 2048-d pool3.

    The weights file is a state_dict of ``torchvision.models.inception_v3`` (for example the
    IMAGENET1K_V1 weights saved with ``torch.save(model.state_dict(), path)``).
    """
    from torchvision.models import inception_v3

    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"Inception weights {weights_path} not found: set gan.metrics.inception_weights to "
            "a local inception_v3 state_dict, or to null to use the CAN classifier's features"
        )
    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    has_aux = any(key.startswith("AuxLogits.") for key in state_dict)
    # transform_input=True matches torchvision's pretrained weights, which expect the
    # ImageNet normalisation below and convert it internally.
    model = inception_v3(weights=None, aux_logits=has_aux, transform_input=True,
                         init_weights=False)
    model.load_state_dict(state_dict)
    return FeatureExtractor(model, name="inception", input_size=299, mean=IMAGENET_MEAN,
                            std=IMAGENET_STD, device=device)


def classifier_extractor(
    model: nn.Module, metadata: Mapping[str, Any], *, name: str = "can_cnn",
    device: str | torch.device = "cpu",
) -> FeatureExtractor:
    """Wrap a classifier loaded with ``dermcan.models.load_classifier``; ``metadata`` gives
    classes, input_size, mean and std."""
    return FeatureExtractor(
        model, name=name, input_size=int(metadata["input_size"]), mean=metadata["mean"],
        std=metadata["std"], classes=metadata["classes"], device=device,
    )


def load_images(paths: Sequence[str | os.PathLike[str]], resolution: int) -> np.ndarray:
    """Load images as uint8 RGB (N, resolution, resolution, 3), centre-cropped to a square.

    Real crops go through the same square crop and resize as the GAN's training images, so
    FID measures the generator and not the loss of resolution.
    """
    images = np.empty((len(paths), resolution, resolution, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} not found: rerun the stage that listed it")
        with Image.open(path) as image:
            images[i] = np.asarray(ImageOps.fit(
                image.convert("RGB"), (resolution, resolution), Image.Resampling.LANCZOS
            ))
    return images


def compare_image_sets(
    real: Mapping[str, np.ndarray],
    generated: Mapping[str, np.ndarray],
    extractor: FeatureExtractor,
    *,
    kid_subset_size: int = 100,
    kid_subsets: int = 50,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compute FID and KID per class and overall, plus the classifier check when the extractor
    is a classifier over these classes.

    ``real`` and ``generated`` map class names to uint8 image arrays (N, H, W, 3). A class
    with fewer than 2 images on either side gets null values. The classifier check
    (``classifier_agreement``) is the share of generated images whose arg-max class is the
    class they were generated for. Returns ``{"overall": {...}, "per_class": {name: {...}}}``.
    """
    fid_key, kid_key = f"fid_{extractor.name}", f"kid_{extractor.name}"
    real_features = {name: extractor(images, batch_size)[0] for name, images in real.items()
                     if len(images)}
    generated_outputs = {name: extractor(images, batch_size)
                         for name, images in generated.items() if len(images)}
    check_classes = extractor.classes is not None and all(
        name in extractor.classes for name in generated_outputs
    )

    per_class: dict[str, dict[str, Any]] = {}
    agreeing = 0
    for name in sorted(set(real) | set(generated)):
        entry: dict[str, Any] = {
            "real_images": int(len(real.get(name, ()))),
            "generated_images": int(len(generated.get(name, ()))),
            fid_key: None, kid_key: None, f"{kid_key}_std": None,
        }
        if name in real_features and name in generated_outputs \
                and len(real_features[name]) >= 2 and len(generated_outputs[name][0]) >= 2:
            a, b = generated_outputs[name][0], real_features[name]
            entry[fid_key] = frechet_distance(a, b)
            entry[kid_key], entry[f"{kid_key}_std"] = kernel_inception_distance(
                a, b, subset_size=kid_subset_size, subsets=kid_subsets, seed=seed)
        if check_classes and name in generated_outputs:
            predicted = generated_outputs[name][1].argmax(axis=1)
            hits = int((predicted == extractor.classes.index(name)).sum())
            agreeing += hits
            entry["classifier_agreement"] = hits / len(predicted)
        per_class[name] = entry
        if progress is not None:
            progress(name)

    all_generated = np.concatenate([outputs[0] for outputs in generated_outputs.values()])
    all_real = np.concatenate(list(real_features.values()))
    kid_mean, kid_std = kernel_inception_distance(
        all_generated, all_real, subset_size=kid_subset_size, subsets=kid_subsets, seed=seed)
    overall: dict[str, Any] = {
        "real_images": int(len(all_real)),
        "generated_images": int(len(all_generated)),
        fid_key: frechet_distance(all_generated, all_real),
        kid_key: kid_mean,
        f"{kid_key}_std": kid_std,
    }
    if check_classes:
        overall["classifier_agreement"] = agreeing / len(all_generated)
    return {"features": extractor.name, "overall": overall, "per_class": per_class}
