"""Ablation reports: mean and spread over seeds per table cell, as a table, markdown and a figure."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vmad_pipeline.ablation.run import HIERARCHY_SHOWN, METRICS

DESCRIBED = (
    "cell_projector",
    "cell_ltc_steps",
    "cell_dssl",
    "cell_expert",
    "cell_region_tokens",
    "cell_adapter",
    "cell_synthesis",
)
# What a cell stored before a description existed was: the default.
DESCRIBED_BEFORE = {
    "cell_expert": "none",
    "cell_region_tokens": "off",
    "cell_adapter": "lora",
    "cell_synthesis": "paste",
}
SHOWN = ("image_auroc", "pixel_auroc", "aupro")  # the paper's Img / Pixel / PRO columns
LABELS = {"image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "aupro": "AUPRO"}


def summarise_ablation(results: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per (table, cell): mean and sample standard deviation (ddof 1) over seeds of every
    metric and timing; and the same as nested JSON for ``dvc metrics``."""
    keys = ["table", "table_title", "cell", "label"]
    described = [*DESCRIBED, "visual_tokens"]
    numeric = [
        *METRICS,
        "train_images_per_s",
        "eval_images_per_s",
        "train_seconds",
        "params_adapter",
    ]
    # Read back from CSV, an empty string is NaN: LTC steps of a non-LTC projector are "".
    # Cells stored before a module or option existed had its default.
    results = results.assign(
        cell_ltc_steps=results["cell_ltc_steps"].fillna("").astype(str),
        **{
            k: results.get(k, pd.Series(v, index=results.index)).fillna(v)
            for k, v in DESCRIBED_BEFORE.items()
        },
    )
    rows = []
    for (table, title, cell, label), group in results.groupby(keys, sort=False):
        row = {"table": table, "table_title": title, "cell": cell, "label": label}
        row |= {k: group[k].iloc[0] for k in described}
        row["n_seeds"] = len(group)
        for k in numeric:
            # a metric an older cell did not record (cells are cached) is undefined, not an error
            values = pd.to_numeric(
                group.get(k, pd.Series(np.nan, index=group.index)), errors="coerce"
            )
            row[f"{k}_mean"] = float(values.mean())
            row[f"{k}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    summary = pd.DataFrame(rows)
    metrics: dict[str, Any] = {}
    for r in rows:
        metrics.setdefault(r["table"], {})[r["cell"]] = {
            **{
                f"{k}_{stat}": _round(r[f"{k}_{stat}"]) for k in METRICS for stat in ("mean", "std")
            },
            "visual_tokens": int(r["visual_tokens"]),
            "eval_images_per_s": _round(r["eval_images_per_s_mean"]),
            "n_seeds": r["n_seeds"],
        }
    return summary, metrics


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def _cell(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def ablation_markdown(summary: pd.DataFrame) -> str:
    """The comparison table: one section per paper table, mean ± sample s.d. over seeds."""
    lines = [
        "# Ablation",
        "",
        "Mean ± sample standard deviation over seeds, on the split's unseen classes "
        "(unweighted class mean). Throughput: images per second, measured in this run.",
    ]
    for _table, group in summary.groupby("table", sort=False):
        options = _options(group)
        header = [
            *("cell", "projector", "LTC steps", "DSSL", "expert", "region"),
            *(OPTION_LABELS[k] for k in options),
            "visual tokens",
            *(LABELS[m] for m in SHOWN),
            *("image AP", "image F1-max", "pixel AP", "answer acc.", "type acc.", "location acc."),
            *("train img/s", "eval img/s", "seeds"),
        ]
        lines += [
            "",
            f"## {group['table_title'].iloc[0]}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for r in group.itertuples():
            values = [_cell(getattr(r, f"{m}_mean"), getattr(r, f"{m}_std")) for m in SHOWN]
            extra = [
                _cell(getattr(r, f"{m}_mean"), getattr(r, f"{m}_std"))
                for m in (*EXTRA, "defect_type_accuracy", "location_accuracy")
            ]
            shown = [_option(r, k) for k in options]
            lines.append(
                f"| {r.label} | {r.cell_projector} | {r.cell_ltc_steps or '-'} | "
                f"{'on' if r.cell_dssl else 'off'} | {r.cell_expert} | {r.cell_region_tokens} | "
                + "".join(f"{v} | " for v in shown)
                + f"{int(r.visual_tokens)} | "
                + " | ".join(values + extra)
                + f" | {r.train_images_per_s_mean:.1f} | {r.eval_images_per_s_mean:.1f} | "
                f"{r.n_seeds} |"
            )
        lines += _module_lines(group)
    return "\n".join(lines) + "\n"


EXTRA = ("image_ap", "image_f1_max", "pixel_ap", "answer_accuracy")
# Columns shown only in a table where some cell differs from the default (Table VI's).
OPTION_LABELS = {
    "cell_adapter": "adapter",
    "params_adapter_mean": "adapter params",
    "cell_synthesis": "synthesis",
}


def _options(group: pd.DataFrame) -> list[str]:
    adapter = bool((group["cell_adapter"] != DESCRIBED_BEFORE["cell_adapter"]).any())
    synthesis = bool((group["cell_synthesis"] != DESCRIBED_BEFORE["cell_synthesis"]).any())
    return [
        *(("cell_adapter", "params_adapter_mean") if adapter else ()),
        *(("cell_synthesis",) if synthesis else ()),
    ]


def _option(row, key: str) -> str:
    value = getattr(row, key)
    if key == "params_adapter_mean":
        return "n/a" if math.isnan(value) else f"{int(value):,}"
    return str(value)


EXPERT_SHOWN = ("expert_image_auroc", "expert_pixel_auroc", "expert_aupro")
REGION_SHOWN = ("answer_accuracy", "location_accuracy", "defect_type_accuracy")


def _module_lines(group: pd.DataFrame) -> list[str]:
    """Under a table with the seeds' modules: the expert's own map and score, and the answers
    with no region, the predicted one (the cell's) and the true one."""
    lines = []
    experts = group[group["cell_expert"] != "none"]
    if len(experts):
        lines += [
            "",
            "The anomaly expert's own map and score (Anomaly-OV's significance map):",
            "",
            "| cell | expert image AUROC | expert pixel AUROC | expert AUPRO |",
            "|---|---|---|---|",
        ]
        for r in experts.itertuples():
            cells = [_cell(getattr(r, f"{m}_mean"), getattr(r, f"{m}_std")) for m in EXPERT_SHOWN]
            lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    lines += _hierarchy_lines(group)
    amoe = group[group["cell_adapter"] == "amoe_lora"]
    if len(amoe):
        lines += [
            "",
            "AMoE-LoRA's routing: the anomaly-aware experts' summed mean gate over the training "
            "tokens of normal and anomalous images:",
            "",
            "| cell | normal images | anomalous images |",
            "|---|---|---|",
        ]
        for r in amoe.itertuples():
            cells = [
                _cell(
                    getattr(r, f"router_anomaly_gate_{s}_mean"),
                    getattr(r, f"router_anomaly_gate_{s}_std"),
                )
                for s in ("normal", "anomalous")
            ]
            lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    regions = group[group["cell_region_tokens"] != "off"]
    if len(regions):
        head = [f"{m.replace('_', ' ')} ({s})" for m in REGION_SHOWN for s in SETTINGS]
        lines += ["", "Region tokens: no region, predicted, true (oracle) region:", ""]
        lines += ["| cell | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for r in regions.itertuples():
            cells = [
                _cell(getattr(r, f"{p}{m}_mean"), getattr(r, f"{p}{m}_std"))
                for m in REGION_SHOWN
                for p in ("no_region_", "", "oracle_region_")
            ]
            lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    return lines


SETTINGS = ("none", "predicted", "oracle")
HIERARCHY_LABELS = ("L1 binary", "L2 type", "L3 location", "L4 description", "L4 impact")
HIERARCHY_LABELS += ("L4 suggestion", "L4 mean ROUGE-L")


def _hierarchy_lines(group: pd.DataFrame) -> list[str]:
    """The hierarchical text levels (docs/evaluation.md) of the cells that asked the follow-ups:
    L1 the detection answer's accuracy, L2 / L3 the type / location follow-ups' accuracy, L4 the
    description, impact and suggestion answers' ROUGE-L F against the RIAD answers."""
    asked = group[group["level4_rouge_l_mean"].notna()]
    if not len(asked):
        return []
    lines = ["", "Hierarchical text evaluation (levels 1 to 4):", ""]
    lines += ["| cell | " + " | ".join(HIERARCHY_LABELS) + " |", "|---|" + "---|" * 7]
    for r in asked.itertuples():
        cells = [
            _cell(getattr(r, f"{m}_mean"), getattr(r, f"{m}_std"))
            for m in ("answer_accuracy", *HIERARCHY_SHOWN)
        ]
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    return lines


def ablation_figure(summary: pd.DataFrame):
    """One figure: per table, grouped bars of the three headline metrics with s.d. error bars."""
    tables = list(dict.fromkeys(summary["table"]))
    sizes = [int((summary["table"] == t).sum()) for t in tables]
    fig = Figure(figsize=(max(6.0, 1.1 * max(sizes) + 2), 3.2 * len(tables)))
    axes = fig.subplots(len(tables), 1, squeeze=False)
    width = 0.8 / len(SHOWN)
    for ax, table in zip(axes[:, 0], tables, strict=True):
        group = summary[summary["table"] == table]
        x = np.arange(len(group))
        for i, m in enumerate(SHOWN):
            ax.bar(
                x + (i - (len(SHOWN) - 1) / 2) * width,
                group[f"{m}_mean"],
                width,
                yerr=group[f"{m}_std"],
                capsize=2,
                label=LABELS[m],
            )
        ax.set_xticks(
            x,
            [
                f"{lab}\n({int(t)} tok)"
                for lab, t in zip(group["label"], group["visual_tokens"], strict=True)
            ],
            fontsize=7,
        )
        low = np.nanmin(group[[f"{m}_mean" for m in SHOWN]].to_numpy())
        ax.set_ylim(max(0.0, (low if np.isfinite(low) else 0.5) - 0.15), 1.0)
        ax.set_title(group["table_title"].iloc[0], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=len(SHOWN), loc="lower right")
    fig.tight_layout()
    return fig


def report_ablation(results: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any], str, Any]:
    """Summary table (CSV), metrics (JSON), comparison table (markdown), figure."""
    summary, metrics = summarise_ablation(results)
    return summary, metrics, ablation_markdown(summary), ablation_figure(summary)
