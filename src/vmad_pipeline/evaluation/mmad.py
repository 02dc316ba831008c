"""MMAD-style multiple-choice accuracy per question type (when an mmad.json is given): the
question as the model reads it, the answering loop, the parsing of the chosen letter and the
report."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from vmad_pipeline import prompts
from vmad_pipeline.configs.evaluate import EvaluateConfig
from vmad_pipeline.datasets.mmad import read_mmad
from vmad_pipeline.evaluation.eval_set import check_seen
from vmad_pipeline.images import load_rgb
from vmad_pipeline.metrics.text import parse_option
from vmad_pipeline.models.references import patches
from vmad_pipeline.splitting import seen_mask

log = logging.getLogger(__name__)
MMAD_INSTRUCTION = "Answer with the option's letter from the given choices directly."
MMAD_ANSWER_COLUMNS = [
    "image_path",
    "type",
    "question_index",
    "question",
    "options",
    "answer",
    "response",
    "chosen",
    "correct",
]


class Answerer(Protocol):
    """What MMAD needs of a predictor (``inference.predictor.Predictor`` is one)."""

    image_size: int  # the side of the images it reads

    def answer(
        self, images: torch.Tensor, prompt_texts: list[str], *, max_new_tokens: int, batch_size: int
    ) -> Any: ...


def mmad_question(question: str, options: dict[str, str]) -> str:
    """The multiple-choice question as the model reads it: question, one option per line
    ("A. Yes."), and MMAD's instruction to answer with the letter."""
    lines = [question.strip(), *(f"{k}. {v}" for k, v in options.items()), MMAD_INSTRUCTION]
    return "\n".join(lines)


def mmad_category(image_path: str) -> str:
    """The object class of an MMAD image key (``<dataset>/<object>/...``)."""
    parts = image_path.split("/")
    return parts[1] if len(parts) > 2 else ""


def evaluate_mmad(
    answerer: Answerer, cfg: EvaluateConfig, trained_on: dict[str, Any] | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """MMAD accuracy per question type when ``evaluate.mmad.questions`` names an ``mmad.json``:
    the model answers each multiple-choice question about its image. Questions about a class
    the model was trained on (``trained_on``) are refused or scored apart in ``report["seen"]``,
    by ``evaluate.seen_classes``. Without the parameter, an empty table and
    ``{"enabled": false}``."""
    mcfg = cfg.mmad
    if not mcfg.questions:
        return pd.DataFrame(columns=MMAD_ANSWER_COLUMNS), {"enabled": False}
    questions = read_mmad(mcfg.questions)
    if mcfg.limit:
        questions = questions.head(mcfg.limit).reset_index(drop=True)
    questions["category"] = [mmad_category(p) for p in questions["image_path"]]
    questions["source"] = [p.split("/")[0] for p in questions["image_path"]]
    questions["seen"] = seen_mask(questions, trained_on or {}).to_numpy()
    check_seen(questions, trained_on or {}, cfg, splits=None, what="MMAD questions")
    root = Path(mcfg.root) if mcfg.root else Path(mcfg.questions).parent
    responses = _responses(answerer, questions, root, cfg)
    seen = questions["seen"].to_numpy(bool)
    table, report = score_mmad(questions[~seen], _pick(responses, ~seen), mcfg.questions)
    table = table.assign(seen=False)
    if seen.any():
        part, part_report = score_mmad(questions[seen], _pick(responses, seen), mcfg.questions)
        report["seen"] = {"note": "questions about classes the model was trained on", **part_report}
        table = pd.concat([table, part.assign(seen=True)], ignore_index=True)
    return table, report


def _pick(values: list, keep: np.ndarray) -> list:
    return [v for v, k in zip(values, keep, strict=True) if k]


def _responses(
    answerer: Answerer, questions: pd.DataFrame, root: Path, cfg: EvaluateConfig
) -> list[str]:
    responses: list[str] = []
    starts = range(0, len(questions), cfg.batch_size)
    for s in tqdm(starts, desc="MMAD", disable=not cfg.progress, leave=False):
        chunk = questions.iloc[s : s + cfg.batch_size]
        images = torch.stack(
            [
                torch.from_numpy(load_rgb(root / p, answerer.image_size)).permute(2, 0, 1)
                for p in chunk["image_path"]
            ]
        )
        texts = [
            prompts.user_turn(mmad_question(q, o))
            for q, o in zip(chunk["question"], chunk["options"], strict=True)
        ]
        extra = {}
        if _reads_references(answerer, cfg):
            extra["references"] = [_template(answerer, root, t) for t in chunk["templates"]]
        responses += answerer.answer(
            images, texts, max_new_tokens=cfg.mmad.max_new_tokens, batch_size=len(texts), **extra
        ).texts
    return responses


def _reads_references(answerer, cfg: EvaluateConfig) -> bool:
    """MMAD's 1-shot protocol applies: asked for, and a model with the reference cue."""
    model = getattr(answerer, "model", None)
    return cfg.mmad.references and getattr(model, "cue", None) is not None


def _template(answerer, root: Path, templates: list[str]):
    """The memory of an image's first similar normal template (None when it has none)."""
    if not templates:
        return None
    image = torch.from_numpy(load_rgb(root / templates[0], answerer.image_size)).permute(2, 0, 1)
    return patches(answerer.reference_features(image[None]))  # its patches, M x C


def score_mmad(
    questions: pd.DataFrame, responses: list[str], questions_file: str
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The chosen letter of each response (``metrics.text.parse_option``; unparseable = wrong)
    and the accuracy per question type. Returns (one row per question, report with ``per_type``
    and ``mean_over_types``)."""
    table = questions.assign(response=responses)
    table["chosen"] = [
        parse_option(r, o) for r, o in zip(table["response"], table["options"], strict=True)
    ]
    table["correct"] = table["chosen"] == table["answer"]
    if table.empty:
        return table[MMAD_ANSWER_COLUMNS], {"enabled": True, "n_questions": 0, "per_type": {}}
    per_type = {
        t: {
            "accuracy": round(float(g["correct"].mean()), 6),
            "n": len(g),
            "unparsed": int(g["chosen"].isna().sum()),
        }
        for t, g in table.groupby("type")
    }
    report = {
        "enabled": True,
        "questions_file": str(questions_file),
        "n_questions": len(table),
        "n_images": int(table["image_path"].nunique()),
        "accuracy": round(float(table["correct"].mean()), 6),
        "mean_over_types": round(float(np.mean([v["accuracy"] for v in per_type.values()])), 6),
        "unparsed": int(table["chosen"].isna().sum()),
        "per_type": per_type,
    }
    log.info(
        "MMAD: %d questions, accuracy %.3f (mean over %d types %.3f)",
        len(table),
        report["accuracy"],
        len(per_type),
        report["mean_over_types"],
    )
    table["options"] = [json.dumps(o) for o in table["options"]]
    return table[MMAD_ANSWER_COLUMNS], report


def mmad_mlflow(report: dict[str, Any]) -> dict[str, float]:
    """The MMAD report as flat numbers for MLflow (empty when MMAD is off or nothing unseen was
    asked); the seen classes' under ``seen/``."""
    if not report.get("enabled") or not report.get("per_type"):
        return {}
    flat = {"accuracy": report["accuracy"], "mean_over_types": report["mean_over_types"]}
    for t, v in report["per_type"].items():
        flat[f"{t.replace(' ', '_').lower()}/accuracy"] = v["accuracy"]
    if "seen" in report:
        flat |= {f"seen/{k}": v for k, v in mmad_mlflow(report["seen"]).items()}
    return flat
