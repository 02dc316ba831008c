"""Benchmark: could one threshold make the zero-shot answer right? (issue 25: the answer's
balanced accuracy is 0.686 at k = 0 against 0.80.)

Reads each project's evaluation answers (`data/08_reporting/answers.csv`, the unseen classes,
zero-shot) and finds, on those very images, the single threshold on P(yes) and on the image
score that maximises the balanced accuracy: an upper bound on any calibration, which would have
to choose it without the test images. Also reports the answer's own balanced accuracy and, per
class, the median P(yes) of normal and anomalous images.

    python benchmarks/zero_shot_threshold.py --projects /tmp/refs6/full-0 /tmp/refs6/full-1 /tmp/refs6/full-2

Writes benchmarks/results/zero_shot_threshold.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from default_run import on_projects


def _balanced(said: np.ndarray, labels: np.ndarray) -> float:
    return float((said[labels == 1].mean() + (~said[labels == 0]).mean()) / 2)


def _best(values: np.ndarray, labels: np.ndarray) -> dict:
    cuts = np.unique(values)
    scored = [(_balanced(values >= c, labels), float(c)) for c in cuts]
    best, at = max(scored)
    return {"balanced_accuracy": round(best, 4), "threshold": round(at, 4)}


def measure(project: Path) -> dict:
    answers = pd.read_csv(project / "data/08_reporting/answers.csv")
    answers = answers[answers.source == "synthetic"]
    labels = answers.label.to_numpy()
    out = {
        "images": len(answers),
        "answer": round(_balanced(answers.said_anomalous.to_numpy(bool), labels), 4),
        "best_p_yes_threshold": _best(answers.p_yes.to_numpy(), labels),
        "best_score_threshold": _best(answers.score.to_numpy(), labels),
        "median_p_yes": {
            cls: {
                "normal": round(float(part[part.label == 0].p_yes.median()), 4),
                "anomalous": round(float(part[part.label == 1].p_yes.median()), 4),
            }
            for cls, part in answers.groupby("category")
        },
    }
    print(project.name, out, flush=True)
    return out


if __name__ == "__main__":
    on_projects(__doc__, "zero_shot_threshold", measure)
