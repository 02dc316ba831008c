"""Benchmark: peak host memory of training over 1,000 and over 20,000 images at 1024 px.

The streaming loader reads each sample from its file when a batch needs it, so host memory must
not grow with the number of images (issue 13's target: within 10%). Each size runs in its own
process (a peak is per process): the tiny model at a SAM input of 1024 px (a coarse ViT patch
so that the CPU can run it), 5 steps of batch 2. The rows cycle over 50 distinct 1024 px PNG
files: memory is what the process holds, which the loader makes independent of whether two
rows share a file (the page cache is not in a process's resident set).

    python benchmarks/training_memory.py            # both sizes, about a minute each

Writes benchmarks/results/training_memory.json. The in-memory table it replaced would have held
3 MiB per image at this size: 2.9 GiB for 1,000 images and 58.6 GiB for 20,000.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZE, DISTINCT = 1024, 50


def images(folder: Path) -> list[str]:
    import numpy as np
    from PIL import Image

    names = []
    for i in range(DISTINCT):
        rng = np.random.default_rng(i)
        base = rng.integers(60, 120, (SIZE // 16, SIZE // 16, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((SIZE, SIZE), Image.BILINEAR)
        name = f"img{i:03d}.png"
        img.save(folder / name)
        names.append(name)
    return names


def one_run(n: int, folder: Path) -> dict:
    """Train over ``n`` rows in this process; return the summary's cost figures."""
    import pandas as pd
    import torch
    from helpers.models import CFG

    from vmad_pipeline import prompts
    from vmad_pipeline.configs import SamConfig, TrainConfig
    from vmad_pipeline.configs.train import CheckpointConfig
    from vmad_pipeline.training.fit import fit_vmad, make_job
    from vmad_pipeline.training.tokenizer import train_tokenizer

    names = sorted(p.name for p in folder.glob("img*.png"))
    rows = pd.DataFrame(
        {
            "source": "s",
            "category": ["part", "bolt"] * (n // 2),
            "image_path": [names[i % len(names)] for i in range(n)],
            "mask_path": "",
            "label": 0,
        }
    )
    model_cfg = dataclasses.replace(
        CFG,
        sam=SamConfig(
            image_size=SIZE,
            patch_size=64,
            embed_dim=32,
            depth=1,
            num_heads=2,
            prompt_dim=16,
            decoder_depth=1,
            decoder_mlp_dim=32,
            decoder_heads=2,
        ),
    )
    tok = train_tokenizer(
        [prompts.seg_prompt("part"), prompts.vqa_prompt("bolt"), prompts.SEG_ANSWER] * 3,
        vocab_size=300,
    )
    cfg = TrainConfig(
        steps=5,
        batch_size=2,
        warmup_steps=1,
        progress=False,
        checkpoint=CheckpointConfig(dir=str(folder / f"ckpt{n}")),
    )
    torch.set_num_threads(2)
    qa = pd.DataFrame(columns=["source", "image_path"])
    out = fit_vmad(make_job(rows, {"s": str(folder)}, qa, tok, cfg, model_cfg))
    keys = ("train_images", "train_seconds", "images_per_s", "peak_host_memory_mb")
    return {k: out.summary[k] for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,20000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child run
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        sys.path.insert(0, str(REPO / "tests"))
        print(json.dumps(one_run(args.one, Path(args.folder))))
        return
    import subprocess as sp

    from default_run import machine

    commit = sp.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    results = {"machine": machine(), "commit": commit.stdout.strip(), "image_size": SIZE}
    results["settings"] = "tiny model, SAM input 1024 px (patch 64), 5 steps, batch 2, 0 workers"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images(folder)
        for n in (int(s) for s in args.sizes.split(",")):
            cmd = [sys.executable, __file__, "--one", str(n), "--folder", tmp]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[str(n)] = json.loads(out.stdout.strip().splitlines()[-1])
            print(n, results[str(n)])
    sizes = [k for k in results if k.isdigit()]
    peaks = [results[k]["peak_host_memory_mb"] for k in sizes]
    results["ratio_largest_to_smallest"] = round(max(peaks) / min(peaks), 3)
    target = REPO / "benchmarks" / "results" / "training_memory.json"
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
