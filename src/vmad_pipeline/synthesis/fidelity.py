"""How faithful generated defects are: PSNR outside the mask (the part that must not change),
the realism of the inside as a feature statistic against real defects of the same type, with
reference values that say what the number means, and a detector's image AUROC on generated
anomalies next to its AUROC on real ones.

Realism: KID (Binkowski et al., "Demystifying MMD GANs", ICLR 2018), the unbiased MMD^2 with the
cubic polynomial kernel ``(x.y / d + 1) ** 3``, on frozen ImageNet EfficientNet-Lite0 features
(the ``small`` preset's backbone; its two deepest levels, mean-pooled: 112 + 320 = 432 numbers)
of crops around the mask. KID, not FID: it is unbiased at the few dozen crops a defect type has
here, where a 432 x 432 covariance is not even full rank. Each feature vector is L2-normalised
and scaled to length sqrt(d) (:func:`on_sphere`), so the kernel reads the crops' cosine
similarity, ``(cos + 1) ** 3``: raw EfficientNet activations are large enough that ``x.y / d``
reaches the hundreds and the cubic kernel's variance swamps the statistic (measured: real-vs-real
halves at -40, generated at +12, before the scaling). References per type: ``real_halves``
(the real crops split in two: the floor a perfect generator reaches at this sample size) and
``unpainted`` (the same crops of the normal image before painting: what "no defect" scores).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics.pairwise import polynomial_kernel
from torch.nn import functional as F

STATISTIC = (
    "KID x 1000 (unbiased MMD^2, kernel (x.y/d + 1)^3 = (cos + 1)^3 on features scaled to length "
    "sqrt(d)) on frozen ImageNet EfficientNet-Lite0 features (levels 3-4 mean-pooled, 432-d) of "
    "mask-region crops, vs real defects of the type"
)


def psnr_outside(generated: np.ndarray, base: np.ndarray, mask: np.ndarray, cap: float) -> float:
    """PSNR (dB, peak 255) of ``generated`` against ``base`` (H x W x 3 uint8) over the pixels
    where ``mask`` (H x W) is 0; ``cap`` when they are identical there (MSE 0: infinite PSNR)
    or when nothing lies outside."""
    outside = np.asarray(mask) == 0
    diff = generated[outside].astype(np.float64) - base[outside].astype(np.float64)
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    if mse == 0.0:
        return float(cap)
    return float(min(cap, 10.0 * math.log10(255.0**2 / mse)))


def kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased KID between feature sets ``x`` (m x d) and ``y`` (n x d), m, n >= 2."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"KID needs at least 2 samples a side, got {m} and {n}")
    d = x.shape[1]
    kxx = polynomial_kernel(x, x, degree=3, gamma=1.0 / d, coef0=1)
    kyy = polynomial_kernel(y, y, degree=3, gamma=1.0 / d, coef0=1)
    kxy = polynomial_kernel(x, y, degree=3, gamma=1.0 / d, coef0=1)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def mask_box(mask: np.ndarray, context: float) -> tuple[int, int, int, int]:
    """The square (top, left, side, side) around ``mask``'s box, grown by ``context`` x its side
    on each side and kept inside the image; the whole image for an empty mask."""
    size = mask.shape[-1]
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return 0, 0, size, size
    side = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    side = int(min(size, math.ceil(side * (1 + 2 * context))))
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    top = int(np.clip(round(cy - side / 2), 0, size - side))
    left = int(np.clip(round(cx - side / 2), 0, size - side))
    return top, left, side, side


def crops(
    images: list[np.ndarray], masks: list[np.ndarray], side: int, context: float
) -> torch.Tensor:
    """The mask-region crop of each image (H x W x 3 uint8), resized to ``side``: N x 3 x s x s
    in [0, 1]."""
    out = []
    for image, mask in zip(images, masks, strict=True):
        top, left, h, w = mask_box(mask, context)
        patch = torch.from_numpy(image[top : top + h, left : left + w]).permute(2, 0, 1).float()
        out.append(
            F.interpolate(patch[None] / 255.0, (side, side), mode="bilinear", antialias=True)[0]
        )
    return torch.stack(out) if out else torch.zeros((0, 3, side, side))


@torch.no_grad()
def crop_features(backbone, batch: torch.Tensor) -> np.ndarray:
    """``backbone`` (``models.efficientnet.FrozenEfficientNet``) features of crops: its two
    deepest levels, mean-pooled, concatenated and put on the sphere (:func:`on_sphere`): N x 432."""
    if not len(batch):
        return np.zeros((0, 432))
    levels = backbone(batch)
    return on_sphere(torch.cat([lv.mean(dim=(2, 3)) for lv in levels[-2:]], dim=1).double().numpy())


def on_sphere(features: np.ndarray) -> np.ndarray:
    """Each row L2-normalised and scaled to length sqrt(d): ``x.y / d`` is then the rows' cosine
    similarity, whatever the backbone's activation scale."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12) * math.sqrt(features.shape[1])


def realism(generated: np.ndarray, real: np.ndarray, unpainted: np.ndarray) -> dict:
    """KID x 1000 of generated vs real features, with the two references (None where a side has
    fewer than 2 samples; ``real_halves`` needs 4 real ones)."""

    def safe(a, b):
        return round(1000 * kid(a, b), 3) if len(a) >= 2 and len(b) >= 2 else None

    return {
        "kid_generated": safe(generated, real),
        "kid_unpainted": safe(unpainted, real),
        "kid_real_halves": safe(real[0::2], real[1::2]) if len(real) >= 4 else None,
    }


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float | None:
    """Image AUROC (scikit-learn) of anomalous vs normal scores; None without both kinds."""
    if not len(normal) or not len(anomalous):
        return None
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return round(float(roc_auc_score(labels, np.r_[normal, anomalous])), 4)


def markdown_table(title: str, table: dict[str, dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table, one row per key of ``table`` (its defect types and "all")."""
    head = "| Defect type | " + " | ".join(name for _, name in columns) + " |"
    rule = "|" + "---|" * (len(columns) + 1)
    lines = [f"## {title}", "", head, rule]
    for key, row in table.items():
        cells = ["-" if row.get(k) is None else f"{row[k]}" for k, _ in columns]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fidelity_report(generated: dict, real: dict, backbone, cfg) -> dict:
    """Per defect type and over all ("all"): PSNR outside the mask (mean and minimum, and the
    share of images bit-exact there) and :func:`realism`. ``generated``: lists ``images``,
    ``bases`` (the normal images painted on), ``masks``, ``types``; ``real``: ``images``,
    ``masks``, ``types`` of real defects; ``cfg``: ``configs.generate.FidelityConfig``."""
    psnr = np.array(
        [
            psnr_outside(g, b, m, cfg.psnr_cap)
            for g, b, m in zip(
                generated["images"], generated["bases"], generated["masks"], strict=True
            )
        ]
    )

    def features(images, masks):
        return crop_features(backbone, crops(images, masks, cfg.crop, cfg.context))

    f_gen = features(generated["images"], generated["masks"])
    f_unp = features(generated["bases"], generated["masks"])
    f_real = features(real["images"], real["masks"])
    table = {}
    for t, g, r in by_type(generated["types"], real["types"]):
        table[t] = {
            "n_generated": int(g.sum()),
            "n_real": int(r.sum()),
            "psnr_outside_db": round(float(psnr[g].mean()), 2) if g.any() else None,
            "psnr_outside_min_db": round(float(psnr[g].min()), 2) if g.any() else None,
            "outside_exact": round(float((psnr[g] >= cfg.psnr_cap).mean()), 4) if g.any() else None,
            **realism(f_gen[g], f_real[r], f_unp[g]),
        }
    return {"statistic": STATISTIC, "psnr_cap_db": cfg.psnr_cap, "per_type": table}


def by_type(generated_types, real_types):
    """(type, generated rows, real rows) per generated defect type, then ("all", every row):
    the rows as boolean masks over the two lists."""
    g_types, r_types = np.asarray(generated_types), np.asarray(real_types)
    for t in [*sorted(set(generated_types)), "all"]:
        g = np.ones(len(g_types), bool) if t == "all" else g_types == t
        r = np.ones(len(r_types), bool) if t == "all" else r_types == t
        yield t, g, r


FIDELITY_COLUMNS = [
    ("n_generated", "Generated"),
    ("n_real", "Real"),
    ("psnr_outside_db", "PSNR outside (dB)"),
    ("outside_exact", "Outside bit-exact"),
    ("kid_generated", "KID gen-real"),
    ("kid_unpainted", "KID unpainted-real"),
    ("kid_real_halves", "KID real-real"),
]
DETECTOR_COLUMNS = [
    ("n_generated", "Generated"),
    ("n_real", "Real"),
    ("auroc_generated", "I-AUROC generated"),
    ("auroc_real", "I-AUROC real"),
]


def detector_report(normal: np.ndarray, generated: dict, real: dict) -> dict:
    """The detector's image AUROC per defect type (and "all"): ``generated`` / ``real``
    (``scores``, ``types``) against the same ``normal`` scores."""
    g_s, r_s = np.asarray(generated["scores"]), np.asarray(real["scores"])
    table = {}
    for t, g, r in by_type(generated["types"], real["types"]):
        table[t] = {
            "n_generated": int(g.sum()),
            "n_real": int(r.sum()),
            "auroc_generated": auroc(normal, g_s[g]),
            "auroc_real": auroc(normal, r_s[r]),
        }
    return {"n_normal": len(normal), "per_type": table}


__all__ = [
    "DETECTOR_COLUMNS",
    "FIDELITY_COLUMNS",
    "STATISTIC",
    "auroc",
    "crop_features",
    "crops",
    "detector_report",
    "fidelity_report",
    "kid",
    "markdown_table",
    "mask_box",
    "psnr_outside",
    "realism",
]
