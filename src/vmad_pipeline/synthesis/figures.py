"""The overview figure of a generated tree: one row per defect type, the normal image painted on
first, then generated defects with their masks outlined."""

from __future__ import annotations

import numpy as np


def overview_figure(examples: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]):
    """``examples``: defect type -> [(base, generated, mask)] (H x W x 3 uint8, H x W); each row
    shows the first base, then each generated image with its mask's outline. A matplotlib
    figure (the catalog saves it and logs it to MLflow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(examples))
    cols = 1 + max((len(v) for v in examples.values()), default=1)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (dtype, items) in enumerate(sorted(examples.items())):
        if not items:
            continue
        axes[r, 0].imshow(items[0][0])
        axes[r, 0].set_title("normal", fontsize=7)
        axes[r, 0].text(
            -0.1,
            0.5,
            dtype,
            transform=axes[r, 0].transAxes,
            fontsize=7,
            rotation=90,
            va="center",
            ha="right",
        )
        for c, (_, generated, mask) in enumerate(items, start=1):
            axes[r, c].imshow(generated)
            if mask.any():
                axes[r, c].contour(mask > 0, levels=[0.5], colors="red", linewidths=0.6)
            axes[r, c].set_title(dtype, fontsize=7)
    fig.suptitle("Generated defects (mask outlined in red)", fontsize=9)
    fig.tight_layout()
    return fig
