"""The README's (and the docs') measured tables and examples, written from the benchmarks' results.

Each measured block sits between ``<!-- measured: NAME -->`` and ``<!-- /measured -->`` and is
written here from ``benchmarks/results/*.json``, naming the commit and the command that measured
it, so no figure is typed by hand. ``tests/unit/project/test_readme.py`` fails when a block and
its results disagree.

    python benchmarks/readme.py                  # rewrite the blocks from the stored results
    python benchmarks/readme.py --check          # exit 1, naming the blocks, when out of date
    python benchmarks/readme.py --examples --project /tmp/refs/full-0
        # ask a trained project the README's and docs/chat.md's example questions (the chat
        # command's own code, zero-shot and with the board's normal images), store the answers
        # in results/readme_examples.json, then rewrite the blocks

To re-measure the default's tables at HEAD (about 40 minutes on 2 cores, then 5 more):

    python benchmarks/references.py --seeds 0 1 2 --keep /tmp/refs
    python benchmarks/transfer.py --project /tmp/refs/full-0
    python benchmarks/readme.py --examples --project /tmp/refs/full-0
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path

from default_run import REPO, commit
from readme_ablation import RESULTS, _load, _source, ablation, commits, table_v, table_vi
from readme_costs import RENDER as COSTS
from references import _stat, rules_table
from references import table as references_table
from transfer import markdown as transfer_markdown

DOCUMENTS = ("README.md", "docs/chat.md", "docs/measurements.md")
BLOCK = re.compile(
    r"^([ \t]*)<!-- measured: (\w+) -->\n(.*?)^[ \t]*<!-- /measured -->", re.DOTALL | re.MULTILINE
)
EXAMPLE = "data/01_raw/synthetic/pcb/test/good/000.png"
EXAMPLE_REFERENCES = "data/01_raw/synthetic/pcb/train/good"


def _seeds(runs: list[dict], k: str, metric: str) -> str:
    return _stat([r["model"].get(k, {}).get("mean", {}).get(metric) for r in runs])


def _references_runs() -> tuple[dict, list[dict]]:
    info = _load("references.json")
    return info, [r for r in info["runs"] if r["variant"] == "full"]


HEADLINE = (
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AUPRO"),
    ("answer_balanced_accuracy", "answer bal. acc."),
    ("p_yes_auroc", "P(yes) AUROC"),
    ("defect_type_accuracy", "defect-type acc."),
    ("location_accuracy", "location acc."),
)


def _headline_row(name: str, at: str, cells: list[str]) -> str:
    return f"| {name} | {commits(at)} | " + " | ".join(cells) + " |"


def _headline_head() -> list[str]:
    head = "| variant | commit | " + " | ".join(n for _, n in HEADLINE) + " |"
    return [head, "|---" * (len(HEADLINE) + 2) + "|"]


def headline() -> str:
    """The default, zero-shot (the references benchmark's k = 0), beside the training-free
    transductive reference of the same runs."""
    info, runs = _references_runs()
    rows = _headline_head()
    cells = [_seeds(runs, "0", m) for m, _ in HEADLINE]
    rows.append(_headline_row("**VMAD, small (the default)**", info["commit"], cells))
    trans = [
        _stat([r["transductive"].get(m) for r in runs])
        for m in ("image_auroc", "pixel_auroc", "aupro")
    ]
    name = "*training-free reference (transductive, another protocol)*"
    rows.append(_headline_row(name, info["commit"], [*trans, "–", "–", "–", "–"]))
    return _source(info, "references.json") + "\n".join(rows) + "\n"


def variants() -> str:
    """VMAD, the LISA-style baseline and the tiny preset, measured together at one older commit
    (vmad_vs_baseline.json; docs/measurements.md)."""
    older = _load("vmad_vs_baseline.json")
    at = older.get("commit", "0c63bf1")  # measured before the benchmark recorded its commit
    names = {"vmad": "VMAD, small", "baseline": "LISA-style baseline, small", "tiny": "VMAD, tiny"}
    rows = _headline_head()
    for variant, name in names.items():
        part = [c for c in older["cells"] if c["variant"] == variant]
        rows.append(_headline_row(name, at, [_stat([c.get(m) for c in part]) for m, _ in HEADLINE]))
    return (
        f"Measured at commit {commits(at)}: `{older['command']}`; "
        "`benchmarks/results/vmad_vs_baseline.json`.\n\n" + "\n".join(rows) + "\n"
    )


WORDS = (
    ("defect_type_accuracy", "defect-type accuracy"),
    ("defect_type_precision", "precision of the types named"),
    ("defect_type_named_share", "share of defects named"),
    ("follow_up_type_accuracy", "follow-up type accuracy"),
    ("location_accuracy", "location accuracy"),
    ("follow_up_location_accuracy", "follow-up location accuracy"),
    ("location_mask_agreement", "answer location = the drawn mask's"),
    ("level4_rouge_l", "level 4 ROUGE-L F (description, impact, suggestion)"),
    ("level4_consistency", "long answers consistent with the detection answer"),
    ("level4_broken_share", "long answers that break off"),
)


def words() -> str:
    info, runs = _references_runs()
    rows = ["| | zero-shot | 4 references |", "|---|---|---|"]
    for metric, name in WORDS:
        rows.append(f"| {name} | {_seeds(runs, '0', metric)} | {_seeds(runs, '4', metric)} |")
    return _source(info, "references.json") + "\n".join(rows) + "\n"


def references() -> str:
    info, runs = _references_runs()
    return (
        _source(info, "references.{json,md}")
        + references_table(runs)
        + "\n"
        + rules_table(runs).rstrip("\n")
        + "\n"
    )


TRANSFER = ("image_auroc", "pixel_auroc", "aupro", "p_yes_auroc", "answer_balanced_accuracy")


def transfer() -> str:
    info = _load("transfer.json")
    head = (
        "| | image AUROC | pixel AUROC | AUPRO | P(yes) AUROC | answer bal. acc. | FPR / recall |"
    )
    rows = [head, "|---" * 7 + "|"]
    parts = (
        ("the model, k = 0", info["model"], None),
        ("the model, k = 4", info["model_shots"]["4"], "4"),
        ("the model, batch", info["model_shots"]["batch"], None),
        ("baseline, k = 4", info["baseline_shots"]["4"], "4"),
        ("transductive reference", info["reference"], None),
    )
    for name, part, k in parts:
        cells = [_stat([part["mean"].get(m)]) for m in TRANSFER]
        decision = part.get("decision") or {}
        fpr = f"{decision['fpr']:.3f} / {decision['recall']:.3f}" if k and decision else "–"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {fpr} |")
    return _source(info, "transfer.json") + "\n".join(rows) + "\n"


def transfer_classes() -> str:
    """The model's zero-shot figures per class of the transfer tree, beside the reference's."""
    info = _load("transfer.json")
    named = [info["model"], info["model_shots"]["4"], info["model_shots"]["batch"]]
    share = [100 * (1 - part["mean"]["defect_type_named_share"]) for part in named]
    return (
        _source(info, "transfer.{json,md}")
        + transfer_markdown(info["model"], info["reference"])
        + '\nNone of these defect types is in the training data: the type head abstains ("an '
        f'anomaly") on {share[0]:.0f}% of the defects zero-shot, {share[1]:.0f}% with 4 '
        f"references and {share[2]:.0f}% in batch mode; defect-type accuracy "
        f"{info['model']['mean']['defect_type_accuracy']:.3f}.\n"
    )


def chat_example() -> str:
    info = _load("readme_examples.json")
    return (
        f"```\n$ vmad-pipeline chat {EXAMPLE}\n{info['chat']}```\n\n"
        f"What the default model (trained at commit {commits(info['commit'])}, seed {info['seed']}) "
        "says of this normal board, zero-shot. With the board's own normal images "
        f"(`--references {EXAMPLE_REFERENCES}`) it opens with:\n\n"
        f"```\n{info['chat_references']}```\n"
    )


def serve_answer() -> str:
    info = _load("readme_examples.json")
    zero, refs = info["served"], info["served_references"]
    return (
        f'It answers `{{"predictions": [{{"score": {zero["score"]:.3f}, "anomalous": '
        f'{str(zero["anomalous"]).lower()}, "answer": "{zero["answer"]}", "mask_png": '
        f'"iVBOR...", ...}}]}}` with the default model (trained at commit {commits(info["commit"])}, '
        f"seed {info['seed']}); with four of the board's normal images as inline `references` "
        f"(or a `profile`): score {refs['score']:.3f}, anomalous {str(refs['anomalous']).lower()}, "
        f'"{refs["answer"]}".\n'
    )


def default_run() -> str:
    """The default `kedro run`'s time from a fresh clone, against the 5-minute target."""
    info = _load("default_run.json")
    total, loop = info["kedro_run_seconds"], info["train_seconds"]
    verdict = "within" if total <= 300 else f"{total - 300:.0f} s over"
    return (
        f"`kedro run` with the default took **{total:.1f} s** at commit {commits(info['commit'])}, of "
        f"which the training loop took {loop:.0f} s and the rest {total - loop:.0f} s: "
        f"{verdict} the 5-minute target (`python benchmarks/default_run.py --total`, nothing "
        f"else running on the 2 cores, load average {info['load_average_at_start']} at the "
        "start; `benchmarks/results/default_run.json`).\n"
    )


RENDER = {
    "headline": headline,
    "variants": variants,
    "words": words,
    "references": references,
    "transfer": transfer,
    "transfer_classes": transfer_classes,
    "ablation": ablation,
    "table_v": table_v,
    "table_vi": table_vi,
    "chat_example": chat_example,
    "serve_answer": serve_answer,
    "default_run": default_run,
    **COSTS,
}


def rendered(text: str) -> str:
    """``text`` with each measured block written from the results."""

    def block(m: re.Match) -> str:
        indent, name = m.group(1), m.group(2)
        if name not in RENDER:
            raise SystemExit(f"no renderer for the measured block {name!r}: {sorted(RENDER)}")
        body = "".join(
            indent + line if line.strip() else line
            for line in RENDER[name]().splitlines(keepends=True)
        )
        return f"{indent}<!-- measured: {name} -->\n{body}{indent}<!-- /measured -->"

    return BLOCK.sub(block, text)


class _Terminal(io.StringIO):
    """A terminal's stdin for the chat command: its questions echoed into the transcript."""

    def __init__(self, questions: list[str], transcript: io.StringIO) -> None:
        super().__init__("".join(q + "\n" for q in questions))
        self.transcript = transcript

    def isatty(self) -> bool:
        return True

    def readline(self, *args) -> str:
        line = super().readline(*args)
        self.transcript.write(line)
        return line


def examples(project: Path, seed: int) -> dict:
    """The chat command's transcript and the registered model's answer for :data:`EXAMPLE`,
    zero-shot and against the board's normal images, asked of ``project``."""
    import os

    from vmad_pipeline.apps.commands import chat
    from vmad_pipeline.apps.project import load_detector, load_references
    from vmad_pipeline.images import read_rgb

    os.chdir(project)
    detector = load_detector(".")
    refs = load_references(detector, EXAMPLE_REFERENCES, "pcb", ".", None)
    out = {}
    for key, given, questions in (
        ("chat", None, ["Where is it?", "quit"]),
        ("chat_references", refs, []),
    ):
        args = argparse.Namespace(
            json=False,
            category=None,
            out="data/08_reporting/chat",
            image=EXAMPLE,
            max_new_tokens=48,
            loaded_references=given,
        )
        transcript = io.StringIO()
        chat(detector, read_rgb(EXAMPLE), args, _Terminal(questions, transcript), transcript)
        text = transcript.getvalue()
        out[key] = text if questions else text.rsplit("> ", 1)[0]
    out |= served(project)
    return {"commit": commit(project), "seed": seed, **out}


def served(project: Path) -> dict:
    """The registered model's answer (the README's pyfunc example; the REST server's the same)."""
    import base64

    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/vmad/latest")
    image = base64.b64encode((project / EXAMPLE).read_bytes()).decode()
    normals = sorted((project / EXAMPLE_REFERENCES).glob("*.png"))[:4]
    inline = json.dumps([base64.b64encode(p.read_bytes()).decode() for p in normals])
    keep = ("score", "anomalous", "answer")
    out = {}
    for key, row in (("served", {}), ("served_references", {"references": [inline]})):
        frame = model.predict(pd.DataFrame({"image": [image], "category": ["pcb"], **row}))
        first = frame.iloc[0]
        out[key] = {k: (round(float(first[k]), 3) if k == "score" else first[k]) for k in keep}
        out[key]["anomalous"] = bool(out[key]["anomalous"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a block is out of date")
    ap.add_argument("--examples", action="store_true", help="ask --project the examples first")
    ap.add_argument("--project", type=Path, help="a trained project (with --examples)")
    ap.add_argument("--seed", type=int, default=0, help="the training seed of --project")
    args = ap.parse_args()
    if args.examples:
        found = examples(args.project.resolve(), args.seed)
        found["asked_at"] = commit()
        (RESULTS / "readme_examples.json").write_text(json.dumps(found, indent=1) + "\n")
    stale = []
    for name in DOCUMENTS:
        path = REPO / name
        text = path.read_text()
        new = rendered(text)
        if new != text:
            stale.append(name)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (python benchmarks/readme.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
