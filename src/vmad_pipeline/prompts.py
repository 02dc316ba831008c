"""The conversation format, in one place (method.md section 1): special tokens, prompt and
answer templates, and how a conversation becomes token ids and labels.

Shared vocabulary: ``models/`` (special tokens, DSSL's state phrases), ``training/`` (samples,
labels) and ``inference/`` (prompts, P(yes)) all read it from here.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

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


# What a user may put into a prompt (docs/serving.md, "Limits"): an object's name and a question.
MAX_OBJECT_CHARS = 64
MAX_QUESTION_CHARS = 400
SPECIAL_TOKENS = (IMAGE_TOKEN, SEG_TOKEN)  # a user's text may not place these


def user_text(text, *, what: str, max_chars: int) -> str:
    """Text a user gives, as it may enter a prompt: the one rule of every interface (REST,
    pyfunc, chat, demo, predict's manifests). Whitespace runs, newlines included, become one
    space. Empty text, text of more than ``max_chars`` characters, and text holding a special
    token (``<image>``, ``[SEG]``) or a control character are refused with a ValueError naming
    ``what`` and the limit."""
    text = " ".join(str(text).split())
    if not text:
        raise ValueError(f"{what}: empty")
    if len(text) > max_chars:
        raise ValueError(f"{what}: {len(text)} characters, more than the {max_chars} allowed")
    if any(t in text for t in SPECIAL_TOKENS):
        raise ValueError(f"{what}: may not contain {' or '.join(SPECIAL_TOKENS)}")
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise ValueError(f"{what}: may not contain control characters")
    return text


def object_text(category) -> str:
    """An object's name as a user gives it (:func:`user_text`, at most ``MAX_OBJECT_CHARS``)."""
    return user_text(category, what="category", max_chars=MAX_OBJECT_CHARS)


def question_text(question) -> str:
    """A user's question (:func:`user_text`, at most ``MAX_QUESTION_CHARS``)."""
    return user_text(question, what="question", max_chars=MAX_QUESTION_CHARS)


def object_name(category: str) -> str:
    return category.replace("_", " ")


def user_turn(question: str) -> str:
    """The prompt up to the assistant's answer; the image placeholder comes first."""
    return f"{SYSTEM}USER: {IMAGE_TOKEN} {question} ASSISTANT:"


def next_turn(question: str) -> str:
    """A follow-up question of a conversation, after an answer's end-of-sequence token."""
    return f" USER: {question} ASSISTANT:"


def seg_prompt(category: str) -> str:
    return user_turn(SEG_QUESTION.format(object=object_name(category)))


def seg_answer_prompt(category: str, kind: str) -> str:
    return user_turn(
        SEG_ANSWER_QUESTION.format(object=object_name(category), kind=ANSWER_KINDS[kind])
    )


def vqa_question(category: str) -> str:
    """The detection question about ``category``, as a user reads it."""
    return VQA_QUESTION.format(object=object_name(category))


def vqa_prompt(category: str) -> str:
    return user_turn(vqa_question(category))


# The answer to the detection question (VQA_QUESTION): yes / no first, then what and where. It
# does not repeat the object's name: the question holds it, and a small LLM trained in minutes
# recalls a training class's name rather than copying an unseen one (measured: 0 of 60 unseen
# names copied after 600 steps with half the training questions about made-up names). [SEG]
# comes first (seg_first: the text can read the state that draws the mask) or last; the text a
# user sees has it removed.
DETECT_DEFECT = "Yes. There is {a_defect} at the {location}."
DETECT_ANOMALY = "Yes. There is an anomaly at the {location}."
DETECT_NORMAL = "No. It looks normal."
# Follow-up questions after the detection answer (multi-turn chat): kind -> the questions
# training draws from (the chat accepts any question). Answers: ``training.samples``.
FOLLOW_UPS = {
    "location": ("Where is it?", "Where is the defect?"),
    "type": ("What kind of defect is it?", "What type of defect is it?"),
    "description": ("Describe it.", "What does it look like?"),
    "impact": ("How severe is it?", "What is its impact?"),
    "suggestion": ("What should be done?", "How should it be fixed?"),
}
FOLLOW_UP_LOCATION = "It is at the {location}."
FOLLOW_UP_TYPE = "It is {a_defect}."
FOLLOW_UP_NONE = "There is no defect to point at: the part looks normal."
GENERIC_OBJECT = "part"  # how stored answers (RIAD) refer to the object in training


def detection_answer(
    *,
    anomalous: bool,
    defect: str | None = None,
    location: str | None = None,
    seg_first: bool = True,
) -> str:
    """The trained answer to the detection question: "Yes. There is a scratch at the top left."
    (no defect type: "an anomaly"; no location: "the center"), or "No. It looks normal.", with
    [SEG] before (``seg_first``) or after the text."""
    if not anomalous:
        text = DETECT_NORMAL
    elif defect:
        text = DETECT_DEFECT.format(a_defect=a_defect(defect), location=location or "center")
    else:
        text = DETECT_ANOMALY.format(location=location or "center")
    return f"{SEG_TOKEN} {text}" if seg_first else f"{text} {SEG_TOKEN}"


def a_defect(defect: str) -> str:
    """ "a scratch", "an oil spot": a defect type's name with its article."""
    name = defect.replace("_", " ")
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


_SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")


def random_name(rng) -> str:
    """A made-up object name of one or two words ("tavoli", "besun kamo"), for training the model
    to copy the name it is asked about instead of recalling a training class's."""

    def word() -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))

    return word() if rng.random() < 0.6 else f"{word()} {word()}"


# --------------------------------------------------------------------------- encoding

IGNORE = -100  # label of positions that carry no loss (prompt, image, padding)


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the encoding uses."""

    bos_token_id: int
    eos_token_id: int

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class ImageSlots:
    """What the image placeholder of a prompt expands to: a placeholder per visual token, then,
    with Anomaly-OV's expert, "with <adv> suspicious feature:" and a placeholder per suspicious
    token (the adverb is one placeholder too: its embedding is the chosen adverb's, so a prompt's
    length never depends on the image), then, with region tokens, "region:" and a placeholder
    per region token. The model fills the placeholders in this order (``VmadModel.embed_inputs``)."""

    visual: int
    expert: int = 0  # suspicious tokens (0: no expert)
    region: int = 0  # region tokens (0: none)

    @property
    def total(self) -> int:
        """Placeholders in all (the adverb's included)."""
        return self.visual + (self.expert + 1 if self.expert else 0) + self.region

    def text(self) -> str:
        text = IMAGE_TOKEN * self.visual
        if self.expert:
            text += f" with {IMAGE_TOKEN} suspicious feature: {IMAGE_TOKEN * self.expert}"
        if self.region:
            text += f" region: {IMAGE_TOKEN * self.region}"
        return text


def expand_image(text: str, slots: int | ImageSlots) -> str:
    """The prompt with its one image placeholder expanded (an int: that many visual tokens)."""
    slots = ImageSlots(slots) if isinstance(slots, int) else slots
    return text.replace(IMAGE_TOKEN, slots.text())


def encode_prompt(tokenizer: Tokenizer, prompt: str, slots: int | ImageSlots) -> list[int]:
    """BOS, then the prompt with the image placeholder expanded."""
    return [tokenizer.bos_token_id] + tokenizer.encode(
        expand_image(prompt, slots), add_special_tokens=False
    )


def encode_answer(tokenizer: Tokenizer, answer: str) -> list[int]:
    """An answer's tokens as the model is trained to produce them: " " + answer, then EOS."""
    return tokenizer.encode(" " + answer, add_special_tokens=False) + [tokenizer.eos_token_id]


def encode_conversation(
    tokenizer: Tokenizer, prompt: str, answer: str, slots: int | ImageSlots
) -> tuple[list[int], list[int]]:
    """Token ids and labels: loss only on the answer (and its end-of-sequence token)."""
    return encode_turns(tokenizer, [(prompt, answer)], slots)


def encode_turns(
    tokenizer: Tokenizer,
    turns: Sequence[tuple[str, list[int] | str | None]],
    slots: int | ImageSlots,
) -> tuple[list[int], list[int]]:
    """A multi-turn conversation's ids and labels: the first turn is a full prompt (with the
    image, e.g. :func:`vqa_prompt`), later ones are questions (:func:`next_turn`); each answer is
    text (encoded as :func:`encode_answer`, with its EOS) or the token ids a model generated
    (EOS included), and carries the loss. A last answer of None leaves the prompt open for the
    next answer (inference)."""
    ids, labels = [], []
    for k, (question, answer) in enumerate(turns):
        if k == 0:
            prompt = encode_prompt(tokenizer, question, slots)
        else:
            prompt = tokenizer.encode(next_turn(question), add_special_tokens=False)
        ids += prompt
        labels += [IGNORE] * len(prompt)
        if answer is None:
            if k != len(turns) - 1:
                raise ValueError("only the last turn of a conversation may lack its answer")
            break
        a = encode_answer(tokenizer, answer) if isinstance(answer, str) else list(answer)
        ids += a
        labels += a
    return ids, labels


def pad_batch(
    seqs: Sequence[list[int]], pad_id: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence (left padding for generation); returns (ids, attention_mask)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, sl] = torch.tensor(s)
        att[i, sl] = 1
    return ids, att


@dataclass(frozen=True)
class YesNoTokens:
    """Where "Yes" and "No" part ways as answers: both are encoded as the trainer encodes an
    answer (:func:`encode_answer`: ``" " + answer``); ``prefix`` holds the tokens they share
    (often none; a lone space token with byte-level BPE tokenizers trained without "ĠYes"),
    ``yes`` / ``no`` the first token of each after it. Where a word is several tokens
    ("Y", "es"), its first token stands for it."""

    prefix: tuple[int, ...]
    yes: int
    no: int


def yes_no_tokens(tokenizer: Tokenizer, *, seg_first: bool = True) -> YesNoTokens:
    """The :class:`YesNoTokens` of the detection answers (:func:`detection_answer`), as the
    trainer encodes them (:func:`encode_answer`)."""
    yes = tokenizer.encode(
        " " + detection_answer(anomalous=True, seg_first=seg_first), add_special_tokens=False
    )
    no = tokenizer.encode(
        " " + detection_answer(anomalous=False, seg_first=seg_first), add_special_tokens=False
    )
    k = 0
    while k < min(len(yes), len(no)) and yes[k] == no[k]:
        k += 1
    if k == min(len(yes), len(no)):
        raise ValueError(
            f"the tokenizer encodes the answers 'Yes.' and 'No.' so that one is a prefix of the "
            f"other ({yes} vs {no}); P(yes) is undefined for it"
        )
    return YesNoTokens(prefix=tuple(yes[:k]), yes=yes[k], no=no[k])
