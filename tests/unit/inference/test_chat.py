"""The multi-turn chat about one image (``inference.chat``) and its command (``apps.commands``) on
a tiny untrained model: the conversation is kept, follow-ups see the earlier turns, a [SEG]
writes its mask at the image's size, bad questions are refused and the context never overflows."""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers.models import tiny_detector
from PIL import Image

from vmad_pipeline import prompts
from vmad_pipeline.apps.commands import chat
from vmad_pipeline.inference.chat import Conversation
from vmad_pipeline.inference.grounding import drawn_regions, evidence_answer
from vmad_pipeline.metrics.text import parse_yes_no


@pytest.fixture(scope="module")
def detector():
    return tiny_detector()


def image(h: int = 30, w: int = 40) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_follow_ups_are_answered_with_the_earlier_turns_as_context(detector, monkeypatch):
    talk = Conversation(detector, image(), "screw", max_new_tokens=4)
    assert talk.inspection.score == detector.inspect([image()], ["screw"])[0].score
    seen = []
    real = detector.predictor.follow_up

    def spy(tensor, histories, questions, **kw):
        seen.append([q for q, _ in histories[0]] + questions)
        return real(tensor, histories, questions, **kw)

    monkeypatch.setattr(detector.predictor, "follow_up", spy)
    first = talk.ask("Where is it?")
    talk.ask("  How severe   is it? ")
    assert seen == [
        [prompts.vqa_prompt("screw"), "Where is it?"],
        [prompts.vqa_prompt("screw"), "Where is it?", "How severe is it?"],
    ]
    assert [t.question for t in talk.turns][1:] == ["Where is it?", "How severe is it?"]
    assert "[SEG]" not in first.answer and "</s>" not in first.answer
    eos = detector.predictor.tokenizer.eos_token_id
    assert all(ids[-1] == eos for _, ids in talk._turns)  # each answer closed in the history


@pytest.mark.parametrize(
    "said, named",
    [(None, None), ("Yes. There is a crack at the {}.", "crack"), ("No. It looks normal.", None)],
)
def test_the_follow_ups_training_asks_are_answered_from_the_first_answers_evidence(
    detector, monkeypatch, said, named
):
    """Where, what kind, describe it, how severe, what should be done: each answer is what the
    first answer's drawn mask and type say (``inference.grounding.evidence_answer``), whole
    sentences, and the LLM is not asked; a question of the user's own is the LLM's. ``said``:
    the first answer made to be this (None: the untrained model's own)."""
    inspect = detector.inspect

    def made_to_say(*args, **kwargs):
        (first,) = inspect(*args, **kwargs)
        if said is None:
            return [first]
        return [replace(first, answer=said.format(first.drawn_location), named_type=named)]

    monkeypatch.setattr(detector, "inspect", made_to_say)
    talk = Conversation(detector, image(), "screw", max_new_tokens=4)
    first = talk.inspection
    calls = []
    real = detector.predictor._generate
    monkeypatch.setattr(
        detector.predictor, "_generate", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    said_yes = parse_yes_no(first.answer) is True
    assert said_yes == (said is not None and said.startswith("Yes"))
    region = drawn_regions(first.square_map[None])[0]
    for kind, questions in prompts.FOLLOW_UPS.items():
        turn = talk.ask(questions[-1])
        assert turn.answer == evidence_answer(kind, region, first.named_type or None, said_yes)
    assert calls == []
    talk.ask("Why is it there?")
    assert calls == [1]
    eos = detector.predictor.tokenizer.eos_token_id
    assert all(ids[-1] == eos for _, ids in talk._turns)  # each answer closed in the history


def test_a_batch_mixing_trained_and_own_questions_keeps_each_answer_in_its_row(detector):
    """The evidence answers the trained question, the LLM the other; each lands in its row."""
    predictor = detector.predictor
    first = detector.inspect([image()], ["screw"])[0]
    history = [(prompts.vqa_prompt("screw"), list(first.answer_ids))]
    slot = ("top left", "crack", True)
    maps = np.zeros((2, predictor.image_size, predictor.image_size), np.float32)
    maps[:, :8, :8] = 0.9
    out = predictor.follow_up(
        torch.stack([detector.tensor(image())] * 2),
        [history, history],
        ["Why is it there?", "Where is it?"],
        earlier_maps=maps,
        max_new_tokens=3,
        slots=[slot, slot],
    )
    assert out.texts[1] == "It is at the top left." and out.seg_found[1] == 0
    assert out.texts[0] is not None and out.texts[0] != out.texts[1]
    assert out.maps.shape == maps.shape and len(out.answer_ids) == 2


def test_ungrounded_the_llm_answers_every_follow_up(detector, monkeypatch):
    """``evaluate.ground_words: false``: the LLM's own words, the trained questions' included."""
    monkeypatch.setattr(detector.predictor, "ground", False)
    talk = Conversation(detector, image(), "screw", max_new_tokens=4)
    calls = []
    real = detector.predictor._generate
    monkeypatch.setattr(
        detector.predictor, "_generate", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    talk.ask("Describe it.")
    assert calls == [1]


def test_bad_questions_are_refused_and_the_conversation_goes_on(detector):
    talk = Conversation(detector, image(), "screw", max_new_tokens=4)
    for bad in ("", "   ", "show <image> again", "draw [SEG]"):
        with pytest.raises(ValueError):
            talk.ask(bad)
    assert len(talk.turns) == 1
    talk.ask("What should be done?")
    assert len(talk.turns) == 2


def test_a_long_conversation_drops_its_oldest_follow_ups_not_the_image(detector):
    talk = Conversation(detector, image(), "screw", max_new_tokens=4)
    limit = detector.predictor.model.config.llm.max_positions
    for _ in range(20):
        talk.ask("What does it look like in every detail of its surface?")
    assert talk._turns[0][0] == prompts.vqa_prompt("screw")  # the turn with the image stays
    ids, _ = prompts.encode_turns(
        detector.predictor.tokenizer, talk._turns, detector.predictor.model.num_image_tokens
    )
    assert len(ids) <= limit and len(talk.turns) == 21
    with pytest.raises(ValueError, match="too long"):  # within the 400 characters, not the context
        talk.ask("x!" * 199)
    with pytest.raises(ValueError, match="more than the 400 allowed"):
        talk.ask("why " * limit)


def test_an_answer_with_seg_writes_its_mask_at_the_images_size(detector):
    """The model made to say [SEG] first: that turn carries a mask and overlay at 30 x 40."""
    model = detector.predictor.model
    head = model.llm.get_output_embeddings()

    def prefer_seg(module, inputs, output):
        bump = torch.zeros_like(output)
        bump[..., model.seg_token_id] = 1e4
        return output + bump

    talk = Conversation(detector, image(), "screw", max_new_tokens=3)
    handle = head.register_forward_hook(prefer_seg)
    try:
        turn = talk.ask("Show me the defect.")  # a question of its own: the LLM answers it
        assert turn.seg_found and turn.mask.shape == (30, 40)
        assert turn.overlay.shape == (30, 40, 3) and set(np.unique(turn.mask)) <= {0, 255}
        later = talk.ask("And now?")  # a later drawn turn: the conversation keeps its pictures only
    finally:
        handle.remove()
    assert later.mask is not None and turn.mask is None and turn.overlay is None
    assert sum(t.overlay is not None for t in talk.turns) == 1  # memory bounded however long

    def never_seg(module, inputs, output):
        bump = torch.zeros_like(output)
        bump[..., model.seg_token_id] = -1e4
        return output + bump

    handle = head.register_forward_hook(never_seg)
    try:  # without [SEG] no map is drawn (SAM's encoder is not run for a follow-up)
        pred = detector.predictor.follow_up(
            talk.tensor[None], [talk._turns], ["Describe it."], earlier_maps=None, max_new_tokens=3
        )
        turn = talk.ask("Describe it.")
    finally:
        handle.remove()
    assert not pred.seg_found[0] and not pred.maps[0].any()
    assert not turn.seg_found and turn.mask is None


def test_the_chat_command_answers_questions_from_stdin_as_json_lines(detector, tmp_path):
    path = tmp_path / "screw" / "test" / "crack" / "000.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(image()).save(path)
    args = argparse.Namespace(
        image=str(path), category=None, json=False, out=str(tmp_path / "out"), max_new_tokens=4
    )
    # an empty line is a refused question, not the end (issue 27: it once ended the chat)
    stdin = io.StringIO("Where is it?\n[SEG]\n\nWhat should be done?\n")
    stdout = io.StringIO()
    assert chat(detector, image(), args, stdin=stdin, stdout=stdout) == 0
    lines = [json.loads(x) for x in stdout.getvalue().splitlines()]
    assert [x.get("turn") for x in lines] == [0, 1, None, None, 2]
    assert lines[0]["question"] == "Is there any defect in the screw?"  # named by its folders
    assert {"score", "anomalous", "image_threshold", "mask_fraction"} <= set(lines[0])
    assert lines[0]["repeats_itself"] is False  # this model does not compare an image with itself
    assert "may not contain" in lines[2]["error"] and "empty" in lines[3]["error"]
    stdin, stdout = io.StringIO("Where is it?\nquit\nWhat should be done?\n"), io.StringIO()
    assert chat(detector, image(), args, stdin=stdin, stdout=stdout) == 0
    assert len(stdout.getvalue().splitlines()) == 2  # the opening and one answer, then quit
    assert lines[0]["anomalous"] == (lines[0]["score"] >= 0.5)
    for line in lines[:2]:
        for file in line["files"].values():
            with Image.open(file) as im:
                assert im.size == (40, 30)


def test_two_images_with_one_file_name_get_their_own_chat_folders():
    from pathlib import Path

    from vmad_pipeline.apps.commands import output_name

    a = output_name(Path("data/01_raw/synthetic/pcb/test/scratch/000.png"))
    b = output_name(Path("data/01_raw/synthetic/pcb/test/good/000.png"))
    assert a == "pcb__test__scratch__000" and b == "pcb__test__good__000"
    assert output_name(Path("000.png")) == "000"
    assert output_name(Path("/tmp/a b/x?.png")) == "tmp__a_b__x_"


def test_the_chat_says_when_the_image_repeats_itself(detector, tmp_path, monkeypatch):
    """Zero-shot, an image with no place unlike the rest of it: the opening says so, in text and
    in its JSON line, beside the score it scaled down."""
    real = detector.inspect
    monkeypatch.setattr(
        detector,
        "inspect",
        lambda *a, **k: [replace(x, repeats_itself=True) for x in real(*a, **k)],
    )
    path = tmp_path / "screw" / "test" / "good" / "000.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(image()).save(path)
    for as_json in (False, True):
        args = argparse.Namespace(
            image=str(path), category=None, json=as_json, out=str(tmp_path), max_new_tokens=4
        )
        stdout, stdin = io.StringIO(), io.StringIO("")
        stdin.isatty = lambda tty=not as_json: tty  # a person at a terminal reads text
        assert chat(detector, image(), args, stdin=stdin, stdout=stdout) == 0
        said = stdout.getvalue()
        if as_json:
            assert json.loads(said.splitlines()[0])["repeats_itself"] is True
        else:
            assert "nothing in the image is unlike the rest of it" in said
