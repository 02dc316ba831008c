"""The ablation's tables for the README (``benchmarks/readme.py`` writes them): Tables III and
IV, V and VI, from each run's per-seed results at full precision; and how a block reads its
results and names their commit."""

from __future__ import annotations

import json

from default_run import REPO
from references import _stat

RESULTS = REPO / "benchmarks" / "results"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def commits(value) -> str:
    """A results file's commit, or its commits ("a, b": HEAD moved between a benchmark's runs),
    each in backticks and at 7 characters, as every measured block names them."""
    return ", ".join(f"`{c.strip()[:7]}`" for c in str(value).split(","))


def _source(info: dict, result: str) -> str:
    seeds = sorted({r["seed"] for r in info.get("runs", [])})
    over = f", seeds {', '.join(map(str, seeds))} (mean ± s.d.)" if seeds else ""
    return (
        f"Measured at commit {commits(info['commit'])}: `{info['command']}`{over}; "
        f"`benchmarks/results/{result}`.\n\n"
    )


ABLATION_CELLS = (  # (table, cell, label): Table IV's avgpool and full-LTC cells repeat Table III's
    ("table_iii", "ltc0_dssl0", "LTC off, DSSL off"),
    ("table_iii", "ltc0_dssl1", "LTC off, DSSL on"),
    ("table_iii", "ltc1_dssl0", "LTC on, DSSL off"),
    ("table_iii", "ltc1_dssl1", "LTC on, DSSL on (VMAD)"),
    ("table_iv", "mlp", "mlp (Table IV)"),
    ("table_iv", "resampler", "resampler"),
    ("table_iv", "ldpv2", "ldpv2"),
    ("table_iv", "ltc_baseline", "LTC baseline (= avgpool)"),
    ("table_iv", "ltc_injection", "+ injection"),
    ("table_iv", "ltc_multilevel", "+ multi-level"),
)
ABLATION = ("image_auroc", "pixel_auroc", "aupro", "p_yes_auroc", "location_accuracy")


def ablation() -> str:
    """Tables III and IV of the ablation (mean ± sample s.d. over its seeds)."""
    info = _load("ablation.json")
    head = "| cell | visual tokens | image AUROC | pixel AUROC | AUPRO | P(yes) AUROC | location acc. |"
    rows = [head, "|---" * 7 + "|"]
    frame = _frame(info)
    for table, cell, label in ABLATION_CELLS:
        v = info["summary"][table][cell]
        part = frame[frame["table"] == table]
        cells = [_stats(part, cell, m) for m in ABLATION]
        rows.append(f"| {label} | {v['visual_tokens']} | " + " | ".join(cells) + " |")
    return _source(info, "ablation.{json,md}") + "\n".join(rows) + "\n"


def _frame(info: dict):
    """An ablation's per-seed results (``results_csv``), at full precision."""
    import io

    import pandas as pd

    return pd.read_csv(io.StringIO("\n".join(info["results_csv"])))


def _stats(frame, cell: str, metric: str) -> str:
    """Mean ± sample s.d. over the seeds of one cell (the stored summary is rounded to 4
    digits: rounding it again to 3 could move the last digit)."""
    return _stat(frame.loc[frame["cell"] == cell, metric].tolist())


def _per_cell(frame, column: str) -> dict:
    """A column of an ablation's per-seed results, averaged per cell."""
    return frame.groupby("cell")[column].mean().to_dict()


TABLE_V = (
    ("vmad", "VMAD"),
    ("vmad_expert", "+ Anomaly-OV expert"),
    ("vmad_region", "+ region tokens (predicted)"),
    ("vmad_both", "+ both"),
    ("anomaly_ov", "Anomaly-OV-style alone (expert + MLP, no DSSL / LTC)"),
)


def table_v() -> str:
    """Table V (the seeds' modules), and the region tokens' three readings."""
    info = _load("table_v.json")
    frame = _frame(info)
    cells, train = info["summary"]["table_v"], _per_cell(frame, "train_images_per_s")
    metrics = ("image_auroc", "pixel_auroc", "aupro", "answer_accuracy", "location_accuracy")
    rows = [
        "| cell | visual tokens | image AUROC | pixel AUROC | AUPRO | answer acc. | location acc. "
        "| train / eval img/s |",
        "|---" * 8 + "|",
    ]
    for cell, label in TABLE_V:
        v = cells[cell]
        speed = f"{train[cell]:.1f} / {v['eval_images_per_s']:.1f}"
        stats = " | ".join(_stats(frame, cell, m) for m in metrics)
        rows.append(f"| {label} | {v['visual_tokens']} | {stats} | {speed} |")
    reads = [
        "| region read | answer acc. | location acc. | defect-type acc. |",
        "|---|---|---|---|",
    ]
    for prefix, label in (
        ("no_region_", "none"),
        ("", "predicted (its own mask)"),
        ("oracle_region_", "true (oracle)"),
    ):
        stats = [
            _stats(frame, "vmad_region", f"{prefix}{m}")
            for m in ("answer_accuracy", "location_accuracy", "defect_type_accuracy")
        ]
        reads.append(f"| {label} | " + " | ".join(stats) + " |")
    expert = " / ".join(
        _stats(frame, "vmad_expert", f"expert_{m}") for m in ("image_auroc", "pixel_auroc", "aupro")
    )
    return (
        _source(info, "table_v.{json,md}") + "\n".join(rows) + "\n\nThe expert's own significance "
        f"map, scored as a second map and score (image AUROC / pixel AUROC / AUPRO): {expert}. "
        "The region tokens' three settings (VMAD + region tokens):\n\n" + "\n".join(reads) + "\n"
    )


TABLE_VI = (
    ("vmad", "LoRA r 8, pasted (VMAD)"),
    ("amoe_same", "AMoE-LoRA 4 x r 2 (same budget)"),
    ("amoe_large", "AMoE-LoRA 4 x r 8 (4x budget)"),
    ("generated", "LoRA, generated anomalies"),
    ("both", "LoRA, pasted + generated"),
)


def table_vi() -> str:
    """Table VI (AMoE-LoRA and generated anomalies)."""
    info = _load("table_vi.json")
    frame = _frame(info)
    params = _per_cell(frame, "params_adapter")
    metrics = (
        "image_auroc",
        "p_yes_auroc",
        "pixel_auroc",
        "aupro",
        "pixel_ap",
        "answer_accuracy",
        "level4_rouge_l",
    )
    rows = [
        "| cell | adapter params | image AUROC | P(yes) AUROC | pixel AUROC | AUPRO | pixel AP | "
        "answer acc. | L4 ROUGE-L |",
        "|---" * 9 + "|",
    ]
    for cell, label in TABLE_VI:
        stats = " | ".join(_stats(frame, cell, m) for m in metrics)
        rows.append(f"| {label} | {params[cell]:,.0f} | {stats} |")
    return _source(info, "table_vi.{json,md}") + "\n".join(rows) + "\n"
