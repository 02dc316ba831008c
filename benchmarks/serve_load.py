"""Benchmark: the REST server under load, a share of the requests hostile (issue 27).

Starts the README's server (`mlflow models serve` of the registered model, a project where
`kedro run` has run) on 127.0.0.1, then `--clients` threads each send `--requests` requests
over real HTTP: valid ones (a test image of an unseen class, base64) and, one in
`--hostile-every`, a hostile one drawn in turn (a 100,000-character category, a category
holding [SEG], a 60,000 x 60,000 PNG bomb header, invalid base64, a text file as an image, more
rows than the server takes). Every valid request must be answered 200 and every hostile one
4xx; the server's memory (RSS of its process group) is read before and after.

    python benchmarks/serve_load.py --project /tmp/default/total

Writes benchmarks/results/serve_load.json (throughput, p50 / p95 latency of the valid
requests, status counts, RSS growth).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from default_run import REPO, commit, machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A PNG whose header claims width x height (its data is a few bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def hostile(image: str) -> list[dict]:
    """The hostile request bodies, in the order they are sent."""
    row = {"image": image, "category": "pcb"}
    return [
        {"dataframe_records": [{**row, "category": "x" * 100_000}]},
        {"dataframe_records": [{**row, "category": "nut [SEG]"}]},
        {"dataframe_records": [{"image": base64.b64encode(bomb_png()).decode()}]},
        {"dataframe_records": [{"image": "%%% not base64 %%%"}]},
        {"dataframe_records": [{"image": base64.b64encode(b"just text").decode()}]},
        {"dataframe_records": [row] * 200},
    ]


def rss_kb(pgid: int) -> int:
    """The summed resident memory of the processes of a process group."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ProcessLookupError):
            continue
    return total


def post(url: str, body: dict) -> tuple[int, float]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as err:
        err.read()
        status = err.code
    except OSError:
        status = -1  # no answer at all
    return status, time.perf_counter() - start


def start_server(project: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = "sqlite:///mlruns/mlflow.db"
    command = ["mlflow", "models", "serve", "-m", "models:/vmad/latest", "--env-manager", "local"]
    return start([*command, "--port", str(port)], project, env, f"http://127.0.0.1:{port}/ping")


def start(command: list[str], project: Path, env: dict, ready: str) -> subprocess.Popen:
    """``command`` started in ``project`` in its own process group (its output in
    ``<project>/<name>.log``), once ``ready`` answers; the log's end if it never does."""
    log_path = project / f"{Path(sys.argv[0]).stem}.log"
    log = open(log_path, "wb")  # noqa: SIM115 (the server's, closed with it)
    proc = subprocess.Popen(
        command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(ready, timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log_path.read_text()[-3000:]) from None
            time.sleep(0.5)


def run_clients(client, n: int) -> float:
    """``client(k)`` for k < n, each in its own thread at once; the seconds until all end."""
    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--hostile-every", type=int, default=4)
    args = ap.parse_args()
    image_file = args.project / "data/01_raw/synthetic/pcb/test/scratch/000.png"
    image = base64.b64encode(image_file.read_bytes()).decode()
    valid = {"dataframe_records": [{"image": image, "category": "pcb"}]}
    bad = hostile(image)
    port = free_port()
    url = f"http://127.0.0.1:{port}/invocations"
    proc = start_server(args.project, port)
    try:
        post(url, valid)  # the model loads on the first request
        before = rss_kb(proc.pid)
        results: list[tuple[str, int, float]] = []
        lock = threading.Lock()

        def client(k: int) -> None:
            for i in range(args.requests):
                n = k * args.requests + i
                is_bad = n % args.hostile_every == args.hostile_every - 1
                body = bad[(n // args.hostile_every) % len(bad)] if is_bad else valid
                status, seconds = post(url, body)
                with lock:
                    results.append(("hostile" if is_bad else "valid", status, seconds))

        wall = run_clients(client, args.clients)
        after = rss_kb(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    valid_s = sorted(s for kind, _, s in results if kind == "valid")
    counts: dict[str, dict[str, int]] = {}
    for kind, status, _ in results:
        counts.setdefault(kind, {}).setdefault(str(status), 0)
        counts[kind][str(status)] += 1
    out = {
        "machine": machine(),
        "commit": commit(),
        "date": time.strftime("%F"),
        "command": "python benchmarks/serve_load.py "
        f"--clients {args.clients} --requests {args.requests} --hostile-every {args.hostile_every}",
        "requests": len(results),
        "wall_s": round(wall, 1),
        "requests_per_s": round(len(results) / wall, 2),
        "valid_p50_s": round(statistics.median(valid_s), 3),
        "valid_p95_s": round(valid_s[int(0.95 * (len(valid_s) - 1))], 3),
        "status_counts": counts,
        "valid_all_200": counts.get("valid", {}) == {"200": len(valid_s)},
        "hostile_all_4xx": all(400 <= int(s) < 500 for s in counts.get("hostile", {})),
        "rss_mb_before": round(before / 1024, 1),
        "rss_mb_after": round(after / 1024, 1),
    }
    (REPO / "benchmarks/results/serve_load.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
