"""The shipped training recipe teaches every level the evaluation asks (docs/evaluation.md,
hierarchical text evaluation): over a small corpus, the conversations the training samples
draw hold the detection question (level 1) and follow-ups of every kind of
``prompts.FOLLOW_UPS`` (type, location, description, impact, suggestion), each answered as
the evaluation grades it."""

from __future__ import annotations

import numpy as np
import yaml
from helpers import REPO

from vmad_pipeline import prompts
from vmad_pipeline.configs.train import parse_train_params
from vmad_pipeline.training.samples import conversation_turns, plan_sample, sample_random


def qa(category: str) -> dict[str, str]:
    """RIAD answers naming the class, as the annotation writes them."""
    name = prompts.object_name(category)
    return {
        "description": f"There is a scratch on the top left of the {name}.",
        "impact": f"The scratch weakens the {name}.",
        "suggestion": f"Polish or replace the {name}.",
    }


def corpus() -> list[tuple[str, str, dict | None, np.ndarray]]:
    """(category, defect type, RIAD answers, mask): anomalous images with their answers and
    normal ones, as TrainingSamples hands them to ``conversation_turns``."""
    mask = np.zeros((16, 16), bool)
    mask[1:5, 1:5] = True
    anomalous = [("hex_nut", "scratch", qa("hex_nut"), mask), ("screw", "crack", qa("screw"), mask)]
    normal = [("hex_nut", "", None, np.zeros_like(mask)), ("screw", "", None, np.zeros_like(mask))]
    return (anomalous + normal) * 10


def test_training_conversations_cover_every_level() -> None:
    params = yaml.safe_load((REPO / "conf/base/parameters_train.yml").read_text())["train"]
    cfg, _ = parse_train_params(params)
    kinds: dict[str, set[str]] = {}
    detection = 0
    for epoch in range(3):
        for index, (category, defect, answers, mask) in enumerate(corpus()):
            rng, _ = sample_random(cfg.seed, epoch, index)
            plan = plan_sample(category, mask.any(), cfg, rng)
            turns = conversation_turns(
                plan, category, defect, answers, mask, seg_first=True, rng=rng
            )
            detection += turns[0][0] == prompts.vqa_prompt(plan.name)
            if len(turns) > 1 and mask.any():
                question, answer = turns[1]
                kind = next(k for k, qs in prompts.FOLLOW_UPS.items() if question in qs)
                kinds.setdefault(kind, set()).add(answer)
    assert detection > 0  # level 1
    assert set(kinds) == set(prompts.FOLLOW_UPS)  # levels 2, 3 and 4
    assert kinds["location"] == {"It is at the top left."}
    assert kinds["type"] <= {"It is a scratch.", "It is a crack."}
    # level 4: the RIAD answers told about "the part", the reference the evaluation grades by
    assert kinds["description"] == {"There is a scratch on the top left of the part."}
    assert kinds["impact"] == {"The scratch weakens the part."}
    assert kinds["suggestion"] == {"Polish or replace the part."}
