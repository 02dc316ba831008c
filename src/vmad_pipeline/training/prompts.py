"""Prompt and answer templates: the one place the conversation format is defined (method.md 1)."""

from __future__ import annotations

IMAGE_TOKEN = "<image>"
SEG_TOKEN = "[SEG]"

SYSTEM = ""  # the tiny preset has no system prompt; LLaVA-1.5's is added by the real preset
SEG_QUESTION = (
    "Are there any abnormalities present in the {object}? "
    "If so, please output the defect segmentation result."
)
ANSWER_KINDS = {  # QA field -> how the question asks for it
    "description": "the description",
    "impact": "an impact analysis",
    "suggestion": "a suggestion",
}
SEG_ANSWER_QUESTION = SEG_QUESTION[:-1] + " and provide {kind}."
VQA_QUESTION = "Is there any defect in the {object}?"
SEG_ANSWER = f"It is {SEG_TOKEN}."
# DSSL's semantic tokens start from the embedded words of these (method.md section 5).
STATE_PHRASES = (
    "a flawless industrial part with no defect",
    "a damaged industrial part with a defect",
)


def object_name(category: str) -> str:
    return category.replace("_", " ")


def user_turn(question: str) -> str:
    """The prompt up to the assistant's answer; the image placeholder comes first."""
    return f"{SYSTEM}USER: {IMAGE_TOKEN} {question} ASSISTANT:"


def seg_prompt(category: str) -> str:
    return user_turn(SEG_QUESTION.format(object=object_name(category)))


def seg_answer_prompt(category: str, kind: str) -> str:
    return user_turn(
        SEG_ANSWER_QUESTION.format(object=object_name(category), kind=ANSWER_KINDS[kind])
    )


def vqa_prompt(category: str) -> str:
    return user_turn(VQA_QUESTION.format(object=object_name(category)))


def vqa_answer(anomalous: bool, text: str) -> str:
    return f"{'Yes' if anomalous else 'No'}. {text}"
