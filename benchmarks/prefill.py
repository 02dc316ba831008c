"""Benchmark: one prefill per image (mask and answer from one generation) against two passes.

Issue 14, item 3: the [SEG] hidden state is taken from generation itself (the KV cache on,
``models/generation.py``) instead of generating the answer and then running a second full
forward over prompt + answer to read [SEG]'s state. The two-pass way is written here as the
reference (``two_pass``: Hugging Face ``generate`` on the prompt's embeddings, then one full
forward with hidden states and the mask drawn from [SEG]'s, or the last token's, state); ours is
``VmadModel.predict``. Both decode greedily with the same budget. ms/image at batch 1 and 8 on
the detection question, over the same images (the reference has no mask evidence, so its
answers may differ; this measures time only).

    python benchmarks/prefill.py --checkpoint /tmp/default/data/06_models/vmad   # a trained model
    python benchmarks/prefill.py                     # the small preset, untrained (full budget)

Writes benchmarks/results/prefill.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vmad_pipeline import prompts
from vmad_pipeline.images import to_model_inputs
from vmad_pipeline.prompts import encode_prompt, pad_batch

REPO = Path(__file__).resolve().parents[1]


def model_and_tokenizer(checkpoint: str | None):
    if checkpoint:
        from vmad_pipeline.models.checkpoint import load_checkpoint

        return load_checkpoint(checkpoint)
    import yaml

    from vmad_pipeline.configs import ModelConfig, from_dict
    from vmad_pipeline.models.build import build_vmad
    from vmad_pipeline.training.tokenizer import train_tokenizer

    params = yaml.safe_load((REPO / "conf/base/parameters_train.yml").read_text())["train"]
    cfg = from_dict(ModelConfig, params["model"], "train.model")
    texts = [prompts.vqa_prompt(c) for c in ("screw", "pcb")] * 20
    tok = train_tokenizer(texts + [prompts.detection_answer(anomalous=True)] * 5, vocab_size=400)
    torch.manual_seed(0)
    return build_vmad(cfg, tok).eval(), tok


def inputs(model, tok, n: int):
    torch.manual_seed(1)
    size = model.config.sam.image_size
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    seqs = [encode_prompt(tok, prompts.vqa_prompt("screw"), model.num_image_tokens)] * n
    ids, att = pad_batch(seqs, tok.pad_token_id, left=True)
    clip, sam = to_model_inputs(images, model.config.vision.image_size)
    return clip, sam, ids, att


@torch.no_grad()
def one_prefill(model, clip, sam, ids, att, budget: int):
    out = model.predict(
        images_clip=clip,
        images_sam=sam,
        input_ids=ids,
        attention_mask=att,
        output_size=tuple(sam.shape[-2:]),
        max_new_tokens=budget,
    )
    return out.answer_ids


@torch.no_grad()
def two_pass(model, clip, sam, ids, att, budget: int):
    """The reference: generate, then a second full forward to read [SEG]'s state."""
    embeds = model.embed_inputs(ids, clip).embeds
    new = model.llm.generate(
        inputs_embeds=embeds,
        attention_mask=att,
        max_new_tokens=budget,
        do_sample=False,
        pad_token_id=model.pad_token_id,
        eos_token_id=model.eos_token_id,
    )
    full = torch.cat([embeds, model.llm.get_input_embeddings()(new)], 1)
    mask = torch.cat([att, torch.ones_like(new)], 1)
    last = model.llm(inputs_embeds=full, attention_mask=mask, output_hidden_states=True)
    states = last.hidden_states[-1][:, ids.shape[1] :]
    is_seg = new == model.seg_token_id
    at = torch.where(is_seg.any(1), is_seg.float().argmax(1), new.shape[1] - 1)
    model.masks_from_states(states[torch.arange(len(new)), at], sam, tuple(sam.shape[-2:]))
    return [row.tolist() for row in new]


def timed(fn, model, batches, budget: int, repeats: int) -> float:
    """Median seconds over ``repeats`` passes over ``batches``."""
    fn(model, *batches[0], budget)  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            fn(model, *b, budget)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a trained checkpoint directory")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--budget", type=int, default=24, help="max new tokens (evaluate's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tok = model_and_tokenizer(args.checkpoint)
    model.eval()
    clip, sam, ids, att = inputs(model, tok, args.images)
    rows = {}
    for batch in (1, 8):
        batches = [
            (clip[s : s + batch], sam[s : s + batch], ids[s : s + batch], att[s : s + batch])
            for s in range(0, args.images, batch)
        ]
        ours = timed(one_prefill, model, batches, args.budget, args.repeats)
        ref = timed(two_pass, model, batches, args.budget, args.repeats)
        rows[f"batch_{batch}"] = {
            "one_prefill_ms_per_image": round(1000 * ours / args.images, 2),
            "two_pass_ms_per_image": round(1000 * ref / args.images, 2),
            "speedup": round(ref / ours, 2),
        }
        print(batch, rows[f"batch_{batch}"], flush=True)
    from default_run import commit, machine

    result = {
        "machine": machine(),
        "commit": commit(),
        "date": time.strftime("%F"),
        "settings": {
            "model": args.checkpoint or "small preset, untrained",
            "images": args.images,
            "max_new_tokens": args.budget,
            "repeats (median)": args.repeats,
            "torch_threads": 2,
        },
        "results": rows,
    }
    out = REPO / "benchmarks" / "results" / "prefill.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
