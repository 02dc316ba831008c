"""Starting the local worker processes of a distributed training run: torch's elastic launcher
(the machinery behind ``torchrun``), so a run started here and one started by ``torchrun`` or
``accelerate launch`` on several machines set up their process group the same way."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any


def distributed_env() -> bool:
    """This process was started by a launcher (torchrun, accelerate launch, or :func:`launch`)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch(fn: Callable[..., Any], args: tuple, processes: int, threads: int) -> Any:
    """Run ``fn(*args)`` in ``processes`` local processes (spawned: nothing of this process's
    state leaks in) and return rank 0's result. A worker's error is raised here with its message
    (``WorkerFailed``). ``threads``: torch threads per process (the cores shared out)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port
        run_id=uuid.uuid4().hex,
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    env = {"OMP_NUM_THREADS": str(max(1, threads)), "TOKENIZERS_PARALLELISM": "false"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return elastic_launch(config, _worker)(fn, *args)[0]
    except ChildFailedError as err:
        first = next(iter(err.failures.values()))
        raise WorkerFailed(f"training worker failed: {first.message}") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class WorkerFailed(RuntimeError):
    """A training worker process raised; the message is the worker's."""


def _worker(fn: Callable[..., Any], *args):
    """A worker's entry: records its error for the launcher (torchelastic's ``record``) and sets
    up logging (a spawned process has none of the parent's configuration)."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import record

    if int(os.environ.get("RANK", "0")) == 0:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return record(fn)(*args)
