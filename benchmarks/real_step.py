"""Benchmark: one training step and inference of the real-size model (needs a GPU).

Builds VMAD with the real preset's shapes but random weights (no checkpoint is needed): CLIP
ViT-L/14 at 336 px, LLaMA-7B (32 layers x 4096), SAM ViT-H at 1024 px, the LTC projector and
DSSL; frozen CLIP and SAM encoder, LoRA r=8 on q/v, bf16 storage of the frozen weights with
autocast, gradient checkpointing. Measures, after warm-up:
- seconds per training step at ``--batch`` (default 2) and the peak GPU memory;
- inference milliseconds per image: mask only (one forward of the prompt plus "It is [SEG].")
  and mask plus a 32-token answer (greedy ``predict``).

    python benchmarks/real_step.py --device cuda            # the real size, on a GPU
    python benchmarks/real_step.py --device cpu --scale tiny   # a smoke test of the script

Writes benchmarks/results/real_step_<device>.json and prints the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from projectors import machine, timed

from vmad_pipeline import prompts
from vmad_pipeline.configs import (
    DsslConfig,
    LLMConfig,
    LtcConfig,
    ModelConfig,
    ProjectorConfig,
    TrainConfig,
    VisionConfig,
)
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.models.pretrained import SAM_VIT_H
from vmad_pipeline.placement import autocast, place_model, resolve_placement
from vmad_pipeline.prompts import encode_conversation, encode_prompt, pad_batch
from vmad_pipeline.training.loop import trainable_parameters
from vmad_pipeline.training.objective import weighted_loss
from vmad_pipeline.training.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
REAL = ModelConfig(
    vision=VisionConfig(
        image_size=336,
        patch_size=14,
        hidden_size=1024,
        intermediate_size=4096,
        num_layers=24,
        num_heads=16,
        select_layer=-2,
    ),
    projector=ProjectorConfig(name="ltc", heads=8, ltc=LtcConfig(heads=8, levels=(12, 16, 22, 23))),
    llm=LLMConfig(
        hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, max_positions=4096
    ),
    sam=SAM_VIT_H,
    dssl=DsslConfig(),
    frozen=("vision", "sam_encoder"),
)
TINY = dataclasses.replace(
    REAL,
    vision=VisionConfig(image_size=56, patch_size=14, hidden_size=32, num_layers=2, num_heads=2),
    projector=ProjectorConfig(name="ltc", heads=2, ltc=LtcConfig(heads=2, levels=(1, 2))),
    llm=LLMConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2),
    sam=dataclasses.replace(
        SAM_VIT_H, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,)
    ),
    dssl=DsslConfig(proj_dim=16, meta_hidden=8, queue_size=8),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", default="real", choices=["real", "tiny"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--answer-tokens", type=int, default=32)
    args = parser.parse_args()
    device, dtype = resolve_placement(args.device, "auto")
    cfg = REAL if args.scale == "real" else TINY
    texts = [prompts.seg_prompt("screw") + " " + prompts.SEG_ANSWER] * 20
    tokenizer = train_tokenizer(texts + list(prompts.STATE_PHRASES), vocab_size=400)
    # The LLaMA-7B vocabulary has 32000 rows; the embedding and head cost follow it.
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(32003 - len(tokenizer))])
    with torch.device(device):  # random-initialise directly on the device
        model = build_vmad(cfg, tokenizer, train_classes=["screw", "pcb"])
    place_model(model, device, dtype)
    model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95))
    b = args.batch
    ids, labels = zip(
        *[
            encode_conversation(
                tokenizer, prompts.seg_prompt("screw"), prompts.SEG_ANSWER, model.num_image_tokens
            )
            for _ in range(b)
        ],
        strict=True,
    )
    input_ids, att = pad_batch(ids, tokenizer.pad_token_id)
    label_ids, _ = pad_batch(labels, -100)
    s_clip, s_sam = cfg.vision.image_size, cfg.sam.image_size
    masks = torch.zeros(b, s_sam, s_sam, device=device)
    masks[0, : s_sam // 4, : s_sam // 4] = 1
    batch = dict(
        images_clip=torch.rand(b, 3, s_clip, s_clip, device=device),
        images_sam=torch.rand(b, 3, s_sam, s_sam, device=device),
        input_ids=input_ids.to(device),
        attention_mask=att.to(device),
        labels=label_ids.to(device),
        masks=masks,
        class_idx=torch.tensor([0, 1] * (b // 2) + [0] * (b % 2), device=device),
    )

    def step():
        model.train()
        with autocast(device, dtype):
            out = model(**batch)
        opt.zero_grad(set_to_none=True)
        weighted_loss(out, TrainConfig().loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s = timed(step, args.repeats, args.device)  # median seconds
    peak_train = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    model.eval()
    prompt = encode_prompt(tokenizer, prompts.seg_prompt("screw"), model.num_image_tokens)
    p_ids, p_att = pad_batch([prompt] * b, tokenizer.pad_token_id, left=True)
    infer = dict(
        images_clip=batch["images_clip"],
        images_sam=batch["images_sam"],
        input_ids=p_ids.to(device),
        attention_mask=p_att.to(device),
        output_size=(s_sam, s_sam),
    )

    @torch.no_grad()
    def mask_only():
        with autocast(device, dtype):
            model(
                **{
                    k: batch[k]
                    for k in ("images_clip", "images_sam", "input_ids", "attention_mask")
                }
            )

    @torch.no_grad()
    def with_answer():
        with autocast(device, dtype):
            model.predict(**infer, max_new_tokens=args.answer_tokens)

    mask_s = timed(mask_only, args.repeats, args.device)
    answer_s = timed(with_answer, args.repeats, args.device)
    result = {
        "command": f"python benchmarks/real_step.py --device {args.device} --scale {args.scale} "
        f"--batch {b} --repeats {args.repeats} --answer-tokens {args.answer_tokens}",
        "machine": machine(args.device),
        "settings": {
            "scale": args.scale,
            "dtype": str(dtype),
            "batch": b,
            "gradient_checkpointing": True,
            "frozen": list(cfg.frozen),
            "params_total_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "params_trainable_m": round(sum(p.numel() for p in params) / 1e6, 1),
            "visual_tokens": model.num_image_tokens,
            "sequence_tokens": int(input_ids.shape[1]),
        },
        "train_step_s": round(step_s, 3),
        "train_peak_memory_gib": None if peak_train is None else round(peak_train, 2),
        "infer_mask_only_ms_per_image": round(1000 * mask_s / b, 1),
        f"infer_mask_plus_{args.answer_tokens}_tokens_ms_per_image": round(1000 * answer_s / b, 1),
    }
    out = REPO / "benchmarks" / "results" / f"real_step_{args.scale}_{device.type}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
