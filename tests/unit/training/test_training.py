"""Training helpers: augmentation, anomaly pasting, conversations, the loop on a tiny model."""

import dataclasses
import random

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.models import tiny_tokenizer

from vmad_pipeline import prompts
from vmad_pipeline.configs import TaskMix, TrainConfig
from vmad_pipeline.prompts import IGNORE, encode_conversation
from vmad_pipeline.training.samples import (
    Plan,
    augment,
    conversation,
    conversation_turns,
    paste_anomaly,
    plan_sample,
)


def test_augment_keeps_image_and_mask_aligned():
    img = torch.zeros(3, 16, 16, dtype=torch.uint8)
    img[:, 2:5, 9:12] = 200  # a bright square ...
    mask = torch.zeros(16, 16, dtype=torch.uint8)
    mask[2:5, 9:12] = 1  # ... and its mask
    for seed in range(8):
        a, m = augment(img, mask, torch.Generator().manual_seed(seed))
        bright = a.float().mean(0) > a.float().mean()
        assert torch.equal(bright, m.bool())


def test_paste_marks_exactly_the_pasted_region():
    g = torch.Generator().manual_seed(0)
    image = torch.full((3, 32, 32), 10, dtype=torch.uint8)
    source = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    mask = torch.zeros(32, 32, dtype=torch.uint8)
    out, m = paste_anomaly(image, mask, source, g)
    assert m.sum() > 0 and mask.sum() == 0  # the input is not changed
    changed = (out != image).any(0)
    assert torch.equal(changed, m.bool())  # pasted from an image of another colour
    assert torch.equal(image, torch.full((3, 32, 32), 10, dtype=torch.uint8))


QA = {
    "description": "A scratch at the top of the hex nut.",
    "impact": "Weakens the hex nut.",
    "suggestion": "Polish it.",
}


def _mask(rows: slice, cols: slice, size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[rows, cols] = True
    return mask


def test_conversations_follow_the_templates():
    rng = random.Random(0)
    top_left = _mask(slice(1, 6), slice(1, 6))
    seg = Plan(task="seg", name="hex nut", paste=False, geometric=True)
    p, a = conversation(seg, "hex_nut", "scratch", QA, top_left, seg_first=True, rng=rng)
    assert p == prompts.seg_prompt("hex_nut") and "hex nut" in p and a == "It is [SEG]."
    plan = Plan(task="seg_answer", name="hex nut", paste=False, geometric=False)
    p, a = conversation(plan, "hex_nut", "scratch", QA, top_left, seg_first=True, rng=rng)
    text = a.split(". ", 1)[1]
    assert a.startswith("It is [SEG]. ") and "hex nut" not in text  # the answer says "part"
    assert text in {v.replace("hex nut", prompts.GENERIC_OBJECT) for v in QA.values()}


def test_detection_answers_describe_the_final_mask():
    """The detection answer is written from the sample's final mask (after augmentation and any
    paste): a real defect is named, a paste alone is "an anomaly", a normal image is "No"."""
    rng = random.Random(0)
    real = Plan(task="vqa", name="tavoli", paste=False, geometric=True)
    top_left, empty = _mask(slice(1, 6), slice(1, 6)), np.zeros((32, 32), bool)
    p, a = conversation(real, "hex_nut", "scratch", QA, top_left, seg_first=True, rng=rng)
    assert p == prompts.vqa_prompt("tavoli")  # the question names the (made-up) object
    assert a == "[SEG] Yes. There is a scratch at the top left."
    pasted = Plan(task="vqa", name="hex nut", paste=True, geometric=True)
    bottom = _mask(slice(26, 31), slice(13, 18))
    _, a = conversation(pasted, "hex_nut", "", QA, bottom, seg_first=False, rng=rng)
    assert a == "Yes. There is an anomaly at the bottom. [SEG]"
    _, a = conversation(real, "hex_nut", "", None, empty, seg_first=True, rng=rng)
    assert a == "[SEG] No. It looks normal."


def test_chat_samples_add_a_follow_up_answered_from_the_same_image():
    """The chat task: the detection turn, then one follow-up of every kind over the draws, each
    answered from the mask (where), the defect type (what kind) or the RIAD answers told about
    "the part"; a normal image's follow-ups say so; a paste alone is asked where or what only."""
    chat = Plan(task="chat", name="hex nut", paste=False, geometric=False)
    top_left, empty = _mask(slice(1, 6), slice(1, 6)), np.zeros((32, 32), bool)
    seen = {}
    for i in range(60):
        turns = conversation_turns(
            chat, "hex_nut", "scratch", QA, top_left, seg_first=True, rng=random.Random(i)
        )
        assert turns[0] == (
            prompts.vqa_prompt("hex nut"),
            "[SEG] Yes. There is a scratch at the top left.",
        )
        (question, answer) = turns[1]
        kind = next(k for k, qs in prompts.FOLLOW_UPS.items() if question in qs)
        seen[kind] = answer
    assert seen == {
        "location": "It is at the top left.",
        "type": "It is a scratch.",
        "description": "A scratch at the top of the part.",
        "impact": "Weakens the part.",
        "suggestion": "Polish it.",
    }
    for i in range(20):
        (_, no), (q, a) = conversation_turns(
            chat, "hex_nut", "", None, empty, seg_first=True, rng=random.Random(i)
        )
        assert no == "[SEG] No. It looks normal." and "normal" in a
    pasted = dataclasses.replace(chat, paste=True)
    for i in range(20):
        _, (q, a) = conversation_turns(
            pasted, "hex_nut", "", None, top_left, seg_first=True, rng=random.Random(i)
        )
        assert a in ("It is at the top left.", "It is an anomaly.")
    one = Plan(task="vqa", name="hex nut", paste=False, geometric=True)
    assert conversation_turns(
        one, "hex_nut", "scratch", QA, top_left, seg_first=True, rng=random.Random(0)
    ) == [
        conversation(one, "hex_nut", "scratch", QA, top_left, seg_first=True, rng=random.Random(0))
    ]


def test_a_conversation_encodes_every_answer_with_its_loss():
    """encode_turns: the image in the first prompt only, every answer (text or generated ids)
    labelled with its EOS, the questions not; one turn equals encode_conversation."""
    tok = tiny_tokenizer()
    first = prompts.vqa_prompt("screw")
    ids, labels = prompts.encode_turns(
        tok, [(first, "No. It looks normal."), ("Where is it?", None)], 4
    )
    a1 = prompts.encode_answer(tok, "No. It looks normal.")
    p1 = prompts.encode_prompt(tok, first, 4)
    q2 = tok.encode(prompts.next_turn("Where is it?"), add_special_tokens=False)
    assert ids == p1 + a1 + q2
    assert labels == [prompts.IGNORE] * len(p1) + a1 + [prompts.IGNORE] * len(q2)
    assert ids.count(tok.convert_tokens_to_ids(prompts.IMAGE_TOKEN)) == 4
    generated = a1[:-1] + [tok.eos_token_id]
    assert prompts.encode_turns(tok, [(first, generated)], 4) == prompts.encode_conversation(
        tok, first, "No. It looks normal.", 4
    )
    with pytest.raises(ValueError, match="only the last turn"):
        prompts.encode_turns(tok, [(first, None), ("Where is it?", "x")], 4)


def test_plans_balance_the_detection_question():
    """Normal images asked the detection question get a paste (a true "Yes") at
    detect_paste_prob; made-up names at name_swap_prob; a seed fixes every choice."""
    cfg = TrainConfig(
        task_mix=TaskMix(seg=0.0, seg_answer=0.0, vqa=1.0),
        detect_paste_prob=0.5,
        name_swap_prob=0.5,
    )
    plans = [plan_sample("hex_nut", False, cfg, random.Random(i)) for i in range(400)]
    assert plans == [plan_sample("hex_nut", False, cfg, random.Random(i)) for i in range(400)]
    pasted = sum(p.paste for p in plans) / len(plans)
    swapped = sum(p.name != "hex nut" for p in plans) / len(plans)
    assert 0.4 < pasted < 0.6 and 0.4 < swapped < 0.6
    anomalous = [plan_sample("hex_nut", True, cfg, random.Random(i)) for i in range(50)]
    assert not any(p.paste for p in anomalous)  # a real defect keeps its own answer


def test_labels_cover_only_the_answer():
    from vmad_pipeline.training.tokenizer import train_tokenizer

    tok = train_tokenizer([prompts.seg_prompt("screw"), "It is [SEG]."] * 3, vocab_size=300)
    ids, labels = encode_conversation(tok, prompts.seg_prompt("screw"), "It is [SEG].", 4)
    n_prompt = sum(1 for x in labels if x == IGNORE)
    assert ids.count(tok.convert_tokens_to_ids("<image>")) == 4
    assert all(x == IGNORE for x in labels[:n_prompt]) and labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:]).strip().startswith("It is") and ids[-1] == tok.eos_token_id


def small_table(tmp_path, n: int = 4, classes: tuple[str, ...] = ("part",)):
    """``n`` flat images per class in a tmp source; returns (rows, roots, tokenizer)."""
    from PIL import Image

    from vmad_pipeline.training.tokenizer import train_tokenizer

    rows = []
    for c in classes:
        for i in range(n):
            img = np.full((32, 32, 3), 60 + 30 * i, np.uint8)
            Image.fromarray(img).save(tmp_path / f"{c}{i}.png")
            rows.append(
                {
                    "source": "s",
                    "category": c,
                    "image_path": f"{c}{i}.png",
                    "mask_path": "",
                    "label": 0,
                }
            )
    texts = [prompts.seg_prompt(c) for c in classes] + [prompts.vqa_prompt(c) for c in classes]
    tok = train_tokenizer(texts + ["It is [SEG].", "No. Fine."] * 3, vocab_size=300)
    return pd.DataFrame(rows), {"s": str(tmp_path)}, tok


def run_small(model, tok, rows, roots, cfg):
    """``training.loop.train`` on the rows, without checkpoints: the curves."""
    from vmad_pipeline.training.data import TrainingSamples
    from vmad_pipeline.training.fit import _spec
    from vmad_pipeline.training.loop import train

    samples = TrainingSamples(rows, roots, {}, cfg, _spec(model), tok)
    return train(model, tok, samples, cfg).history


def test_loop_lowers_the_loss_and_is_seeded(tmp_path):
    from helpers.models import CFG

    from vmad_pipeline.models.build import build_vmad

    rows, roots, tok = small_table(tmp_path)
    cfg = TrainConfig(
        steps=12, batch_size=4, lr=3e-3, warmup_steps=2, progress=False, paste_prob=0.5
    )
    curves = []
    for _ in range(2):
        model = build_vmad(CFG, tok, seed=0)
        curves.append(run_small(model, tok, rows, roots, cfg))
    assert curves[0]["loss"] == curves[1]["loss"]  # same seed, same curve
    assert np.mean(curves[0]["loss"][-3:]) < np.mean(curves[0]["loss"][:3])
    assert len(curves[0]["lr"]) == 12 and curves[0]["lr"][-1] < max(curves[0]["lr"])


def test_bf16_training_with_dssl_and_gradient_checkpointing(tmp_path):
    """The GPU recipe, run on the CPU: frozen weights stored in bf16 under autocast, trained
    ones in fp32, the LLM checkpointed; full VMAD (LTC + DSSL) still learns and logs PBSD."""
    import dataclasses

    from helpers.models import VMAD_CFG

    from vmad_pipeline.models.build import build_vmad

    rows, roots, tok = small_table(tmp_path)
    model_cfg = dataclasses.replace(VMAD_CFG, frozen=("vision", "sam_encoder"))
    model = build_vmad(model_cfg, tok, train_classes=["part"])
    cfg = TrainConfig(
        steps=4,
        batch_size=4,
        warmup_steps=1,
        progress=False,
        paste_prob=1.0,
        precision="bf16",
        gradient_checkpointing=True,
    )
    curves = run_small(model, tok, rows, roots, cfg)
    assert all(np.isfinite(curves["loss"]))
    assert np.isfinite(curves["pbsd"][1:]).all()  # queues hold both states after step 1
    assert model.vision.clip.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert model.seg_head.net[0].weight.dtype == torch.float32
    base = model.llm.get_base_model()  # switched off again after training
    assert not getattr(base, "is_activation_checkpointing", None) and not any(
        getattr(m, "gradient_checkpointing", False) for m in base.modules()
    )


def test_a_model_built_in_bf16_trains_its_weights_in_fp32(tmp_path):
    """The train node builds in the training precision (a 7B checkpoint loads at half the
    memory); placing it puts every trained weight back in fp32 and keeps frozen ones in bf16."""
    import dataclasses

    from helpers.models import VMAD_CFG

    from vmad_pipeline.models.build import build_vmad
    from vmad_pipeline.placement import place_model

    _, _, tok = small_table(tmp_path)
    cfg = dataclasses.replace(VMAD_CFG, frozen=("vision", "sam_encoder"))
    model = build_vmad(cfg, tok, train_classes=["part"], dtype=torch.bfloat16)
    assert any(p.dtype == torch.bfloat16 for p in model.llm.parameters() if p.requires_grad)
    place_model(model, torch.device("cpu"), torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert all(p.dtype == torch.bfloat16 for p in model.vision.parameters())
