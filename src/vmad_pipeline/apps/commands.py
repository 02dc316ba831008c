"""``vmad-pipeline chat IMAGE`` and ``vmad-pipeline demo``: the trained model of the project in
the current folder, asked about one image in a terminal, or shown in a browser.

``chat`` opens with the detection answer (decision, score, location, mask), then answers
follow-up questions about the same image: typed at a prompt when stdin is a terminal, else one
question per line of stdin with one JSON line per answer on stdout (``--json`` forces that).
A turn whose answer emits [SEG] writes its mask and overlay under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path

from PIL import Image

QUIT = {"quit", "exit", "q"}  # or the end of stdin; an empty line is a refused question


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="vmad-pipeline", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="ask the trained model about one image")
    chat.add_argument("image", help="an image file")
    chat.add_argument("--category", help="the object's name (default: from its folders)")
    chat.add_argument("--json", action="store_true", help="JSON lines, even at a terminal")
    chat.add_argument("--out", default="data/08_reporting/chat", help="where masks are written")
    chat.add_argument("--max-new-tokens", type=int, default=48, help="an answer's token budget")
    chat.add_argument(
        "--references",
        help="normal references of the product: a profile's name or a folder of normal images",
    )
    demo = sub.add_parser("demo", help="the web demo (Gradio) on this machine")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=7860)
    for p in (chat, demo):
        p.add_argument("--project", default=".", help="the Kedro project (default: here)")
        p.add_argument("--env", default=None, help="a Kedro configuration environment")
    return top


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "chat":
            from vmad_pipeline.images import read_rgb

            image = read_rgb(args.image)  # an unreadable file stops before the model loads
            detector = _detector(args)
            if args.references:
                args.loaded_references = _references(detector, args)
            return chat(detector, image, args)
        from vmad_pipeline.apps.demo import example_images, examples_label, launch

        examples = example_images(args.project)
        label = examples_label(args.project, examples)
        launch(_detector(args), args.host, args.port, examples, examples_label=label)
        return 0
    except (FileNotFoundError, ValueError) as err:
        print(f"vmad-pipeline {args.command}: {err}", file=sys.stderr)
        return 2


def _detector(args):
    """The project's model; what loading it logs goes to stderr (stdout carries answers)."""
    from vmad_pipeline.apps.project import load_detector

    with contextlib.redirect_stdout(sys.stderr):
        return load_detector(args.project, args.env)


def output_name(image: Path) -> str:
    """The folder a chat's masks go to: the image's last four path parts (an MVTec layout's
    class / split / defect / file), so that pcb/test/scratch/000.png and pcb/test/good/000.png
    do not share one; characters other than letters, digits, '.', '_', '-' become '_'."""
    parts = [*image.parts[-4:-1], image.stem]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "__".join(p for p in parts if p not in ("/", "")))


def unlike_message() -> str:
    from vmad_pipeline.inference.references import UNLIKE

    return UNLIKE


def _references(detector, args):
    """``--references`` as the project's predict and evaluate parameters read it."""
    from vmad_pipeline.apps.project import load_references

    if args.references == "batch":
        raise ValueError("--references batch needs many images: use kedro run --pipeline predict")
    from vmad_pipeline.inference.batch import folder_category

    category = args.category or folder_category(Path(args.image))
    with contextlib.redirect_stdout(sys.stderr):
        return load_references(detector, args.references, category, args.project, args.env)


def chat(detector, image, args, stdin=None, stdout=None) -> int:
    """The conversation about ``image``; questions from ``stdin``, answers to ``stdout``."""
    from vmad_pipeline.inference.batch import folder_category
    from vmad_pipeline.inference.chat import Conversation

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    as_json = args.json or not stdin.isatty()
    category = args.category or folder_category(Path(args.image))
    out = Path(args.out) / output_name(Path(args.image))
    references = getattr(args, "loaded_references", None)
    talk = Conversation(
        detector, image, category, max_new_tokens=args.max_new_tokens, references=references
    )
    first = talk.inspection
    opening = {
        "score": round(first.score, 6),
        "anomalous": first.anomalous,
        "image_threshold": talk.image_threshold,
        **({} if references is None else {"references": references.label}),
        **({"warning": unlike_message()} if first.unlike_references else {}),
        "repeats_itself": first.repeats_itself,  # zero-shot, its score was scaled down
        "location": first.location,
        "defect_type": first.defect_type,
        "mask_fraction": round(first.mask_fraction, 6),
    }
    _say(talk.turns[0], 0, out, stdout, as_json, opening)
    k = 0
    while True:
        if not as_json:
            stdout.write("> ")
            stdout.flush()
        line = stdin.readline()
        if not line or line.strip().lower() in QUIT:
            return 0
        try:
            turn = talk.ask(line)
        except ValueError as err:
            _error(err, stdout, as_json)
            continue
        k += 1
        _say(turn, k, out, stdout, as_json, {})


def _say(turn, k: int, out: Path, stdout, as_json: bool, extra: dict) -> None:
    files = {}
    if turn.mask is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, array in (("mask", turn.mask), ("overlay", turn.overlay)):
            path = out / f"turn-{k:02d}-{name}.png"
            Image.fromarray(array).save(path)
            files[name] = str(path)
    if as_json:
        record = {"turn": k, "question": turn.question, "answer": turn.answer}
        record |= {"seg_found": turn.seg_found, **extra, "files": files}
        stdout.write(json.dumps(record) + "\n")
    else:
        if extra:
            verdict = "ANOMALOUS" if extra["anomalous"] else "normal"
            stdout.write(
                f"{verdict} (score {extra['score']:.3f}, threshold "
                f"{extra['image_threshold']:.3f}, mask {100 * extra['mask_fraction']:.1f}% of "
                "the image)\n"
            )
            if extra.get("repeats_itself"):
                stdout.write("(nothing in the image is unlike the rest of it: score scaled down)\n")
        stdout.write(turn.answer + "\n")
        if files:
            stdout.write(f"  mask: {files['mask']}\n")
    stdout.flush()


def _error(err: Exception, stdout, as_json: bool) -> None:
    text = json.dumps({"error": str(err)}) if as_json else f"  ({err})"
    stdout.write(text + "\n")
    stdout.flush()
