"""Tiny model configs, a tiny tokenizer and a batch builder, shared by every model test."""

from __future__ import annotations

import dataclasses

import torch

from vmad_pipeline import prompts
from vmad_pipeline.configs import (
    DsslConfig,
    LLMConfig,
    LtcConfig,
    ModelConfig,
    ProjectorConfig,
    SamConfig,
    VisionConfig,
)
from vmad_pipeline.prompts import encode_conversation, pad_batch
from vmad_pipeline.training.tokenizer import train_tokenizer

# Tiny sizes so every test runs in a second on a CPU.
CFG = ModelConfig(
    vision=VisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2
    ),
    llm=LLMConfig(
        hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_positions=256
    ),
    sam=SamConfig(
        image_size=32,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
        prompt_dim=16,
        decoder_depth=1,
        decoder_mlp_dim=32,
        decoder_heads=2,
    ),
)
# Full VMAD at the tiny sizes: LTC on two CLIP levels, DSSL with small queues.
VMAD_CFG = dataclasses.replace(
    CFG,
    projector=ProjectorConfig(name="ltc", heads=2, ltc=LtcConfig(heads=2, levels=(1, 2))),
    dssl=DsslConfig(boxes=4, queue_size=8, proj_dim=8, meta_hidden=8),
)
# The small preset (frozen ImageNet EfficientNet-Lite0 for both image branches) at test sizes.
SMALL_CFG = dataclasses.replace(
    VMAD_CFG,
    preset="small",
    vision=VisionConfig(image_size=32, patch_size=8, hidden_size=32, select_layer=2),
    projector=ProjectorConfig(
        name="ltc", heads=2, positions=True, ltc=LtcConfig(heads=2, levels=(1, 3))
    ),
)
B = 2


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained on the prompts and answers the tests use."""
    texts = [prompts.seg_prompt(c) + " " + prompts.SEG_ANSWER for c in ("screw", "carpet")] * 5
    texts += ["Yes. A scratch on the top left.", "No. The part looks normal."] * 5
    return train_tokenizer(texts, vocab_size=300)


def batch(model, tokenizer, *, seg: bool = True) -> dict[str, torch.Tensor]:
    """Two seeded samples ("screw", "carpet") with random images and sparse random masks."""
    answer = prompts.SEG_ANSWER if seg else "No. The part looks normal."
    ids, labels = zip(
        *[
            encode_conversation(tokenizer, prompts.seg_prompt(c), answer, model.image_slots)
            for c in ("screw", "carpet")
        ],
        strict=True,
    )
    input_ids, att = pad_batch(ids, tokenizer.pad_token_id)
    label_ids, _ = pad_batch(labels, -100)
    torch.manual_seed(0)
    return dict(
        images_clip=torch.rand(B, 3, 32, 32),
        images_sam=torch.rand(B, 3, 32, 32),
        input_ids=input_ids,
        attention_mask=att,
        labels=label_ids,
        masks=(torch.rand(B, 32, 32) > 0.9).float(),
    )


def tiny_detector():
    """A tiny untrained model as the product surfaces use it (``inference.service.Detector``,
    thresholds 0.5), answers of at most 6 tokens."""
    from vmad_pipeline.configs.evaluate import EvaluateConfig
    from vmad_pipeline.inference.service import Detector
    from vmad_pipeline.models.build import build_vmad

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    return Detector.for_model(build_vmad(CFG, tok).eval(), tok, EvaluateConfig(max_new_tokens=6))


def cue_detector():
    """A small untrained model that reads references, with a cue that acts (its last layers
    start at zero), as ``inference.service.Detector``: answers of at most 3 tokens, no
    follow-ups, thresholds 0.5."""
    from vmad_pipeline.configs.evaluate import parse_evaluate_params
    from vmad_pipeline.configs.model import ReferenceCueConfig
    from vmad_pipeline.inference.service import Detector
    from vmad_pipeline.models.build import build_vmad

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL_CFG, references=ReferenceCueConfig(enabled=True))
    model = build_vmad(cfg, tok, train_classes=["screw"]).eval()
    with torch.no_grad():
        for net in (model.cue.dense, model.cue.token):
            net[-1].weight.normal_(0, 0.5)
    evaluate = {"max_new_tokens": 3, "progress": False, "follow_ups": False}
    params = parse_evaluate_params({**evaluate, "hierarchy": {"enabled": False}})
    return Detector.for_model(model, tok, params, strict=False)


def random_images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    """n x 3 x size x size uint8 noise, seeded."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (n, 3, size, size), generator=gen, dtype=torch.uint8)
