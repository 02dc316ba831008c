"""The README's cost, inference, chat-sample and generator blocks (``benchmarks/readme.py``
writes them), each from its benchmark's results and naming the commit it was measured at."""

from __future__ import annotations

from readme_ablation import _load, commits
from references import _stat


def _at(info: dict) -> str:
    return commits(info["commit"])


def costs() -> str:
    """A product profile's build and size, and predict's speed with and without it."""
    profile, zero, refs = (
        _load(n) for n in ("profile.json", "predict.json", "predict_references.json")
    )
    shares = f"{refs['images_per_s'] / zero['images_per_s']:.0%}"
    settings = profile["settings"]
    loads = [str(i.get("load_average_at_start", "not recorded")) for i in (profile, zero, refs)]
    return (
        f"Measured at commit {_at(profile)} (profile) and {_at(zero)} / {_at(refs)} (predict), "
        f"2-core CPU, load average at the start {' / '.join(loads)}:\n"
        f"- A profile of {settings['images']} normal images, each read with its flips "
        f"({4 * settings['images']} views), builds in **{profile['build_seconds']:.1f} s** and "
        f"takes **{profile['size_mb']:.1f} MB** (a coreset of {profile['n_patches']:,} patches "
        f"x {profile['dim']} features, float32). The whole `kedro run --pipeline profile` takes "
        f"{profile['run_seconds']:.1f} s.\n"
        "  `python benchmarks/product_profile.py --project <clone after kedro run>`, results in\n"
        "  `benchmarks/results/profile.json`.\n"
        f"- predict over {zero['settings']['images']:,} images runs at "
        f"**{refs['images_per_s']:.1f} images/s** against that profile, and "
        f"**{zero['images_per_s']:.1f} images/s** zero-shot: {shares}.\n"
        "  `python benchmarks/predict.py --project <clone> [--references bench]`, results in\n"
        "  `benchmarks/results/predict{,_references}.json`.\n"
    )


def inference() -> str:
    """predict's throughput and one prefill against two passes, as a table."""
    zero, refs, prefill = (
        _load(n) for n in ("predict.json", "predict_references.json", "prefill.json")
    )
    one, eight = prefill["results"]["batch_1"], prefill["results"]["batch_8"]
    s = zero["settings"]
    return (
        "| what | command | figure |\n| --- | --- | --- |\n"
        f"| `kedro run --pipeline predict` over {s['images']:,} images of 128 px (the default "
        f"model, fp32, batch {s['batch_size']}; a JSON line and mask, map and overlay PNGs per "
        "image) | `python benchmarks/predict.py --project <a trained clone>` | "
        f"**{zero['images_per_s']:.1f} images/s** in the predict loop, "
        f"{zero['run_images_per_s']:.1f} images/s for the whole run with start-up and model load "
        f"({zero['run_seconds']:.1f} s); `benchmarks/results/predict.json`, commit {_at(zero)}. "
        f"Against a profile: {refs['images_per_s']:.1f} images/s (`predict_references.json`, "
        f"commit {_at(refs)}) |\n"
        "| mask and answer from one generation (the [SEG] state read as it is generated, the KV "
        "cache on) against generating and then a second full forward to read [SEG] | "
        "`python benchmarks/prefill.py --checkpoint <default model>` | batch 1: "
        f"**{one['one_prefill_ms_per_image']:.1f} against {one['two_pass_ms_per_image']:.1f} "
        f"ms/image ({one['speedup']:.2f}x)**; batch 8: {eight['one_prefill_ms_per_image']:.1f} "
        f"against {eight['two_pass_ms_per_image']:.1f} ms/image ({eight['speedup']:.2f}x); "
        f"{prefill['settings']['images']} images, {prefill['settings']['max_new_tokens']} new "
        "tokens at most, median of 3; `benchmarks/results/prefill.json`, commit "
        f"{_at(prefill)} |\n"
    )


CHAT = (
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AUPRO"),
    ("answer_balanced_accuracy", "answer bal. acc."),
    ("p_yes_auroc", "P(yes) AUROC"),
    ("location_accuracy", "location acc."),
    ("follow_up_location_accuracy", "follow-up location acc."),
    ("follow_up_type_accuracy", "follow-up type acc."),
)


def chat_samples() -> str:
    """Training with multi-turn chat samples against none (chat.json), mean ± sample s.d. over
    the seeds (``_stat``, as every other table)."""
    info = _load("chat.json")
    head = "| variant | " + " | ".join(n for _, n in CHAT) + " | training loop s (seed 0) |"
    rows = [head, "| --- " * (len(CHAT) + 2) + "|"]
    for variant, name in (("vmad", "with chat (default then)"), ("no_chat", "without")):
        part = [c for c in info["cells"] if c["variant"] == variant]  # one per seed
        cells = [_stat([c[m] for c in part]) for m, _ in CHAT]
        loop = next(c["train_loop_s"] for c in part if c["seed"] == 0)
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {loop:.0f} |")
    seeds = ", ".join(str(s) for s in info["summary"]["vmad"]["seeds"])
    return (
        f"Measured at commit {_at(info)}: `{info['command']}`, seeds {seeds} (mean ± sample "
        "s.d.), unseen classes; "
        "`benchmarks/results/chat.{json,md}`.\n\n" + "\n".join(rows) + "\n"
    )


def generator() -> str:
    """The generator's training, speed and realism (generator.json)."""
    info, timings = _load("generator.json"), _load("generation/timings.json")
    detector = _load("generation/detector.json")["per_type"]["all"]
    fid, s = info["fidelity"], info["settings"]
    every = fid["all"]
    per_type = [v for k, v in fid.items() if k != "all"]
    halves = [v["kid_real_halves"] for v in per_type]
    crops = [v["n_real"] for v in per_type]
    return (
        f"Measured at commit {_at(info)}: `python benchmarks/generator.py --pipeline`; "
        "`benchmarks/results/generator.md` and `benchmarks/results/generation/`.\n\n"
        f"{s['steps']} steps of {s['batch_size']} crops train in "
        f"**{info['train_seconds']:.0f} s** (loss {info['loss_first_10']:.2f} to "
        f"{info['loss_last_10']:.2f}) on the {info['defects_trained_on']} real defects of "
        f"{len(info['defect_types'])} types of the training classes; it paints "
        f"{info['generated_images']} images in {info['generate_seconds']:.1f} s; `kedro run "
        f"--pipeline generate` (generator, painted images, fidelity, detector) takes "
        f"{timings['generate_pipeline_seconds']:.0f} s after the default `kedro run` (at "
        f"{_at(timings)}). Outside the mask "
        f"every generated image is bit-exact (PSNR capped at {every['psnr_outside_db']:.0f} dB, "
        f"share exact {every['outside_exact']:.1f}). Realism, KID x 1000 on EfficientNet-Lite0 "
        "features of mask-region crops against real defects of the type: "
        f"**{every['kid_generated']:.0f} for generated defects**, {every['kid_unpainted']:.0f} "
        f"for the same crops before painting, {every['kid_real_halves']:.0f} for real against "
        f"real (two halves; the estimator's noise at {every['n_real']} crops). Per type "
        f"({min(crops)} to {max(crops)} real crops) the real halves give {max(halves):.0f} to "
        f"{min(halves):.0f}. The trained detector scores generated defects like real ones: image "
        f"AUROC {detector['auroc_generated']:.3f} against {detector['auroc_real']:.3f} "
        "(`generation/detector.json`).\n"
    )


RENDER = {
    "costs": costs,
    "inference": inference,
    "chat_samples": chat_samples,
    "generator": generator,
}
