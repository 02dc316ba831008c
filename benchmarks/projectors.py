"""Benchmark: the projector zoo at the real preset's dimensions, and what its tokens cost the LLM.

For each projector (mlp, avgpool, resampler, ldpv2, ltc) at CLIP width C = 1024, LLM width
d = 4096 and a 24 x 24 patch grid (LLaVA-1.5 / CLIP ViT-L/14 at 336 px):
- parameters and visual tokens per image;
- milliseconds per image of the projector forward (random CLIP hidden states in, so no CLIP);
- LLM prefill time per image with that many visual tokens plus a text prompt, measured on
  ``--layers`` random-initialised LLaMA-7B-shaped decoder layers and scaled linearly to 32
  (every decoder layer of LLaMA-7B has the same shape and cost; the embedding lookup and the
  last-token head are negligible next to them). Use ``--layers 32`` on a GPU for the whole stack.
Prefill time is the median of ``--repeats`` timed runs after one warm-up.

    python benchmarks/projectors.py                         # CPU defaults (a few minutes)
    python benchmarks/projectors.py --device cuda --dtype bf16 --layers 32 --repeats 10

Writes benchmarks/results/projectors[_<device>].json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from vmad_pipeline.configs import PROJECTORS, LtcConfig, ProjectorConfig
from vmad_pipeline.models.projectors import build_projector

REPO = Path(__file__).resolve().parents[1]
C, D, GRID, CLIP_LAYERS = 1024, 4096, 24, 24
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32)
LLAMA_7B_LAYERS = 32


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def projector_config(name: str) -> ProjectorConfig:
    return ProjectorConfig(name=name, heads=8, ltc=LtcConfig(heads=8, levels=(12, 16, 22, 23)))


@torch.no_grad()
def bench_projectors(args, dtype) -> dict[str, dict]:
    g = torch.Generator().manual_seed(0)
    hidden = [
        torch.randn(args.batch[0], GRID * GRID, C, generator=g).to(args.device, dtype)
        for _ in range(CLIP_LAYERS + 1)
    ]
    rows = {}
    for name in PROJECTORS:
        proj = build_projector(projector_config(name), in_dim=C, out_dim=D, grid=GRID)
        proj = proj.to(args.device, dtype).eval()
        levels = [hidden[i] for i in proj.level_indices]
        seconds = timed(lambda p=proj, lv=levels: p(hidden[-2], lv), args.repeats, args.device)
        rows[name] = {
            "params_m": round(sum(p.numel() for p in proj.parameters()) / 1e6, 2),
            "tokens": proj.num_tokens,
            "projector_ms_per_image": round(1000 * seconds / args.batch[0], 2),
        }
        del proj
    return rows


@torch.no_grad()
def bench_prefill(args, dtype, token_counts: list[int]) -> dict[tuple[int, int], float]:
    """Seconds per image of the prefill of ``--layers`` LLaMA-7B layers, per (batch, tokens)."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        **LLAMA_7B,
        num_hidden_layers=args.layers,
        num_key_value_heads=32,
        vocab_size=32,  # inputs_embeds are fed directly; the vocabulary is not exercised
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    model = LlamaModel(config).to(args.device, dtype).eval()
    out = {}
    for batch in args.batch:
        for tokens in token_counts:
            seq = tokens + args.text_tokens
            embeds = torch.randn(batch, seq, D, device=args.device, dtype=dtype)
            seconds = timed(
                lambda e=embeds: model(inputs_embeds=e, use_cache=False), args.repeats, args.device
            )
            out[(batch, tokens)] = seconds / batch
            print(f"  prefill batch {batch}, {tokens} visual tokens: {seconds:.3f} s", flush=True)
    return out


def machine(device: str) -> dict:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--layers", type=int, default=1, help="LLaMA-7B layers actually run")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 1])
    parser.add_argument(
        "--text-tokens", type=int, default=40, help="prompt tokens besides the image"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    print("projectors ...", flush=True)
    rows = bench_projectors(args, dtype)
    print("LLM prefill ...", flush=True)
    prefill = bench_prefill(args, dtype, sorted({r["tokens"] for r in rows.values()}))
    scale = LLAMA_7B_LAYERS / args.layers
    for row in rows.values():
        for batch in args.batch:
            row[f"prefill_ms_per_image_b{batch}"] = round(
                1000 * scale * prefill[(batch, row["tokens"])], 1
            )
    for batch in args.batch:
        key = f"prefill_ms_per_image_b{batch}"
        for row in rows.values():
            row[f"prefill_speedup_vs_mlp_b{batch}"] = round(rows["mlp"][key] / row[key], 2)

    result = {
        "command": "python benchmarks/projectors.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k != "out"
        ),
        "machine": machine(args.device),
        "settings": {
            "clip_width": C,
            "llm_width": D,
            "grid": GRID,
            "llama_layers_run": args.layers,
            "scaled_to_layers": LLAMA_7B_LAYERS,
            "text_tokens": args.text_tokens,
            "dtype": args.dtype,
            "device": args.device,
            "batch": args.batch,
            "repeats": args.repeats,
        },
        "projectors": rows,
    }
    out = args.out or REPO / "benchmarks" / "results" / (
        "projectors.json"
        if args.device == "cpu"
        else f"projectors_{args.device.split(':')[0]}.json"
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    cols = ["params_m", "tokens", "projector_ms_per_image"]
    for batch in args.batch:
        cols += [f"prefill_ms_per_image_b{batch}", f"prefill_speedup_vs_mlp_b{batch}"]
    print("| projector | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(str(row[c]) for c in cols) + " |")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
