"""Benchmark: the web demo under many sessions at once, a share of them hostile (issue 27).

Starts `vmad-pipeline demo` in a project where `kedro run` has run, on 127.0.0.1, then
`--clients` threads each open `--sessions` sessions over real HTTP (gradio_client, as a script
driving the page would): a valid session inspects a test image of an unseen class and asks
`--questions` follow-ups; one in `--hostile-every` is hostile instead, drawn in turn (a text
file named .png, a 60,000 x 60,000 PNG bomb header, a 100,000-character object name, an object
name holding [SEG], a 4,000-character question, a question holding <image>). Every valid session
must be answered, every hostile one refused with its reason and no trace; at the end, an upload
over the page's size limit is sent raw (past the page's own check) and must be refused. The
server's memory (RSS of its process group) is read before, after each quarter and at the end:
more sessions than the page keeps (16) must not grow it without bound.

    python benchmarks/demo_load.py --project /tmp/default/total

Writes benchmarks/results/demo_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

from default_run import REPO, commit, machine
from serve_load import bomb_png, free_port, rss_kb, run_clients, start

MB = 1024 * 1024


def start_demo(project: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    command = ["vmad-pipeline", "demo", "--port", str(port)]
    return start(command, project, env, f"http://127.0.0.1:{port}/")


def hostile_cases(folder: Path, image: str) -> list[tuple[str, str, str | None, str]]:
    """(image, object name, question, the reason the page must give)."""
    notes, bomb = folder / "notes.png", folder / "bomb.png"
    notes.write_text("a text file with an image's name")
    bomb.write_bytes(bomb_png())
    return [
        (str(notes), "pcb", None, "Not an image this demo can read"),
        (str(bomb), "pcb", None, "over this demo's limit"),
        (image, "x" * 100_000, None, "100000 characters"),
        (image, "nut [SEG]", None, "may not contain"),
        (image, "pcb", "why " * 1_000, "question refused"),
        (image, "pcb", "<image> again", "question refused"),
    ]


def session(url: str, case, questions: int) -> tuple[str, float, str]:
    """One session: ("answered" | "refused" | "wrong", seconds, what the page said)."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    image, name, question, reason = case
    start = time.perf_counter()
    client = Client(url, verbose=False)
    try:
        decision = client.predict(handle_file(image), name, None, api_name="/inspect")[0]
    except AppError as err:
        said = str(err)
        ok = reason is not None and reason in said and "Traceback" not in said
        return ("refused" if ok else "wrong"), time.perf_counter() - start, said
    if reason is None:  # valid: each follow-up answered
        for _ in range(questions):
            chat = client.predict("Where is the defect?", api_name="/ask")[0]
            if not isinstance(chat, list):
                return "wrong", time.perf_counter() - start, str(chat)
        return "answered", time.perf_counter() - start, decision
    chat = client.predict(question, api_name="/ask")[0]  # a refused question changes nothing
    kind = "refused" if chat == {"__type__": "update"} else "wrong"
    return kind, time.perf_counter() - start, decision


def oversized_upload(url: str, folder: Path) -> int:
    """The status of a raw upload just over the page's 128 MB limit."""
    import httpx

    big = folder / "big.png"
    with open(big, "wb") as f:
        f.write(os.urandom(129 * MB))
    with open(big, "rb") as f:
        status = httpx.post(f"{url}gradio_api/upload", files={"files": f}, timeout=120).status_code
    big.unlink()
    return status


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--hostile-every", type=int, default=4)
    args = ap.parse_args()
    project = args.project.resolve()
    image = str(project / "data/01_raw/synthetic/pcb/test/scratch/000.png")
    folder = project / "demo_load"
    folder.mkdir(exist_ok=True)
    cases = hostile_cases(folder, image)
    valid = (image, "pcb", None, None)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = start_demo(project, port)
    results: list[tuple[str, str, float, str]] = []
    lock = threading.Lock()
    total = args.clients * args.sessions
    rss_mb = []
    try:
        session(url, valid, 0)  # the first call pays Gradio's and torch's warm-up
        rss_mb.append(round(rss_kb(proc.pid) / 1024, 1))

        def client(k: int) -> None:
            for i in range(args.sessions):
                n = k * args.sessions + i
                is_bad = n % args.hostile_every == args.hostile_every - 1
                case = cases[(n // args.hostile_every) % len(cases)] if is_bad else valid
                kind, seconds, said = session(url, case, args.questions)
                with lock:
                    results.append(("hostile" if is_bad else "valid", kind, seconds, said))
                    if len(results) % max(1, total // 4) == 0:
                        rss_mb.append(round(rss_kb(proc.pid) / 1024, 1))

        wall = run_clients(client, args.clients)
        too_big = oversized_upload(url, folder)
        rss_mb.append(round(rss_kb(proc.pid) / 1024, 1))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    valid_s = sorted(s for kind, _, s, _ in results if kind == "valid")
    wrong = [(kind, said[:200]) for kind, how, _, said in results if how == "wrong"]
    out = {
        "machine": machine(),
        "commit": commit(),
        "date": time.strftime("%F"),
        "command": f"python benchmarks/demo_load.py --clients {args.clients} --sessions "
        f"{args.sessions} --questions {args.questions} --hostile-every {args.hostile_every}",
        "sessions": len(results),
        "valid_sessions": len(valid_s),
        "model_calls_per_valid_session": 1 + args.questions,
        "wall_s": round(wall, 1),
        "sessions_per_s": round(len(results) / wall, 2),
        "valid_session_p50_s": round(statistics.median(valid_s), 3),
        "valid_session_p95_s": round(valid_s[int(0.95 * (len(valid_s) - 1))], 3),
        "valid_all_answered": all(h == "answered" for k, h, _, _ in results if k == "valid"),
        "hostile_all_refused_with_reason": all(
            h == "refused" for k, h, _, _ in results if k == "hostile"
        ),
        "wrong": wrong,
        "oversized_upload_status": too_big,
        "rss_mb_after_warmup_each_quarter_and_end": rss_mb,
    }
    (REPO / "benchmarks/results/demo_load.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
