"""How good a reconstruction is: PSNR, SSIM, identification by nearest
neighbour, matching reconstructions to originals, and the example figure.

Images are float rows in [0, 1] with a known (height, width). numpy only,
except the figure (matplotlib, imported when drawn) and the matching
(scipy's Hungarian solver).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privacy.errors import AuditError

# PSNR of an exact copy is infinite; above ~50 dB an 8-bit image is
# reproduced to the last grey level. Capping keeps means meaningful.
PSNR_CAP_DB = 60.0


def psnr(reconstruction: np.ndarray, original: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for data range 1, capped at 60 dB."""
    mse = float(np.mean((np.asarray(reconstruction, np.float64) - original) ** 2))
    if mse <= 10 ** (-PSNR_CAP_DB / 10):
        return PSNR_CAP_DB
    return -10.0 * math.log10(mse)


def ssim(a: np.ndarray, b: np.ndarray, shape: tuple[int, int], window: int = 7) -> float:
    """Structural similarity (Wang et al. 2004) with a uniform ``window`` ×
    ``window`` window over every position where it fits (scikit-image's
    defaults: K1 = 0.01, K2 = 0.03, sample covariance); the whole image is
    one window when it is smaller than that."""
    x = np.asarray(a, np.float64).reshape(shape)
    y = np.asarray(b, np.float64).reshape(shape)
    w = min(window, *shape)
    c1, c2 = 0.01**2, 0.03**2
    n = w * w
    values = []
    for i in range(shape[0] - w + 1):
        for j in range(shape[1] - w + 1):
            px, py = x[i : i + w, j : j + w].ravel(), y[i : i + w, j : j + w].ravel()
            mx, my = px.mean(), py.mean()
            vx = ((px - mx) ** 2).sum() / (n - 1)
            vy = ((py - my) ** 2).sum() / (n - 1)
            cov = ((px - mx) * (py - my)).sum() / (n - 1)
            values.append(((2 * mx * my + c1) * (2 * cov + c2))
                          / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def match(reconstructions: np.ndarray, originals: np.ndarray) -> np.ndarray:
    """For each original, the index of the reconstruction assigned to it by a
    minimum-total-MSE one-to-one matching (the attacker outputs as many
    images as there are examples; each counts once)."""
    from scipy.optimize import linear_sum_assignment  # noqa: PLC0415

    r = np.asarray(reconstructions, np.float64)
    o = np.asarray(originals, np.float64)
    if len(r) < len(o):
        raise AuditError(f"{len(r)} reconstructions cannot cover {len(o)} originals")
    cost = ((o[:, None, :] - r[None, :, :]) ** 2).mean(axis=2)
    rows, cols = linear_sum_assignment(cost)
    out = np.empty(len(o), np.int64)
    out[rows] = cols
    return out


def identified(reconstructions: np.ndarray, originals: np.ndarray,
               gallery: np.ndarray) -> np.ndarray:
    """Whether each reconstruction's nearest image (L2) in ``gallery`` — every
    example the attacker could confuse it with, the original included — is
    its original (an exact duplicate of the original counts)."""
    r = np.asarray(reconstructions, np.float64)
    g = np.asarray(gallery, np.float64)
    # ‖r − g‖² = ‖r‖² − 2 r·g + ‖g‖²; ‖r‖² is the same for every g.
    dist = (g * g).sum(axis=1)[None, :] - 2 * r @ g.T
    nearest = g[np.argmin(dist, axis=1)]
    same: np.ndarray = np.all(np.isclose(nearest, originals, atol=1e-6), axis=1)
    return same


@dataclass(frozen=True)
class Quality:
    """Reconstruction quality over a set of examples."""

    psnr_mean: float
    psnr_median: float
    ssim_mean: float
    identified: float  # fraction recognised by nearest-neighbour match
    examples: int


def quality(pairs: Sequence[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int],
            gallery: np.ndarray) -> Quality:
    """Quality of (reconstruction, original) rows: each element of ``pairs``
    is one trial's matched reconstructions and originals."""
    if not pairs:
        raise AuditError("no reconstructions to score")
    p: list[float] = []
    s: list[float] = []
    ident: list[bool] = []
    for rec, orig in pairs:
        p += [psnr(a, b) for a, b in zip(rec, orig, strict=True)]
        s += [ssim(a, b, shape) for a, b in zip(rec, orig, strict=True)]
        ident += list(identified(rec, orig, gallery))
    return Quality(float(np.mean(p)), float(np.median(p)), float(np.mean(s)),
                   float(np.mean(ident)), len(p))


def save_figure(path: Path, originals: np.ndarray, rows: Sequence[tuple[str, np.ndarray]],
                shape: tuple[int, int], title: str) -> None:
    """A PNG: the originals on top, then one row of reconstructions per
    (label, images) — the same examples in the same columns."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise AuditError("--png needs matplotlib: pip install 'fedge[audit]'") from exc
    cols = len(originals)
    all_rows = [("original", originals), *rows]
    fig, axes = plt.subplots(len(all_rows), cols, squeeze=False,
                             figsize=(max(6.0, 0.9 * cols + 2.8), 0.9 * len(all_rows) + 0.6))
    for r, (label, images) in enumerate(all_rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(np.clip(images[c], 0, 1).reshape(shape), cmap="gray_r", vmin=0, vmax=1)
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise AuditError(f"--png: cannot write {path}: {exc}") from exc
    finally:
        plt.close(fig)
