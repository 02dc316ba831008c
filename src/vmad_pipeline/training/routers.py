"""AMoE-LoRA's router statistics over a training run: per task and per normal / anomalous image.

Each training sample is labelled ``<task>.<normal|anomalous>`` (``training.data``; the image's
state after any pasted or generated anomaly). The routers count, per label, every attended token
of the training forwards (not the no-gradient own-mask pre-pass, the mask-evidence pass or the
validation passes); this module pools the labels into the two views the issue asks for, merges
the ranks of a multi-process run and flattens the result for MLflow. Statistics cover the steps
of this run (a resumed run counts from where it resumed).
"""

from __future__ import annotations

from typing import Any

from vmad_pipeline.models.amoe_lora import ALL, router_usage

STATES = ("normal", "anomalous")


def _sums(usage: dict[str, Any]) -> dict[str, tuple[list[float], list[float], float]]:
    """label -> (gate sums, top-1 sums, tokens): the pooled form that adds across ranks."""
    out = {}
    for label, row in usage["groups"].items():
        w = float(row["tokens"])
        out[label] = ([g * w for g in row["mean_gate"]], [t * w for t in row["top1_share"]], w)
    return out


def _add(acc: dict, label: str, row: tuple[list[float], list[float], float]) -> None:
    if label not in acc:
        acc[label] = (list(row[0]), list(row[1]), row[2])
        return
    g, t, w = acc[label]
    acc[label] = (
        [a + b for a, b in zip(g, row[0], strict=True)],
        [a + b for a, b in zip(t, row[1], strict=True)],
        w + row[2],
    )


def _row(g: list[float], t: list[float], w: float, experts: list[str]) -> dict[str, Any]:
    denom = max(w, 1e-12)
    gates = {e: x / denom for e, x in zip(experts, g, strict=True)}
    return {
        "tokens": int(round(w)),
        "mean_gate": gates,
        "top1_share": {e: x / denom for e, x in zip(experts, t, strict=True)},
        "anomaly_gate": sum(v for e, v in gates.items() if e.startswith("anomaly_")),
    }


def router_summary(usages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ranks' ``amoe_lora.router_usage`` results merged and pooled: ``{"experts": [...],
    "all": row, "task": {task: row}, "image": {normal|anomalous: row}}``; a row holds the counted
    tokens, each expert's mean gate and top-1 share, and ``anomaly_gate``, the anomaly-aware
    experts' summed mean gate. None when no AMoE layer ran."""
    experts = next((u["experts"] for u in usages if u["experts"]), [])
    if not experts:
        return None
    pooled: dict[str, tuple] = {}
    for usage in usages:
        for label, row in _sums(usage).items():
            _add(pooled, label, row)
    views: dict[str, dict] = {"task": {}, "image": {}}
    for label, row in pooled.items():
        if label == ALL or "." not in label:
            continue
        task, state = label.rsplit(".", 1)
        _add(views["task"], task, row)
        _add(views["image"], state, row)
    out: dict[str, Any] = {"experts": experts}
    if ALL in pooled:
        out["all"] = _row(*pooled[ALL], experts)
    for view, rows in views.items():
        out[view] = {k: _row(*v, experts) for k, v in sorted(rows.items())}
    return out


def model_router_summary(model, gather) -> dict[str, Any] | None:
    """:func:`router_summary` of a model's LLM over every rank (``gather``: an engine's
    ``gather_objects``, collective)."""
    return router_summary(list(gather(router_usage(model.llm))))


def router_metrics(summary: dict[str, Any] | None) -> dict[str, float]:
    """Flat MLflow metrics: ``router_anomaly_gate_<view>_<label>`` and
    ``router_gate_<view>_<label>_<expert>`` (MLflow names allow no colon)."""
    if not summary:
        return {}
    out = {}
    rows = [("all", summary["all"])] if "all" in summary else []
    rows += [(f"{v}_{label}", row) for v in ("task", "image") for label, row in summary[v].items()]
    for key, row in rows:
        out[f"router_anomaly_gate_{key}"] = row["anomaly_gate"]
        for expert, gate in row["mean_gate"].items():
            out[f"router_gate_{key}_{expert}"] = gate
    return out
