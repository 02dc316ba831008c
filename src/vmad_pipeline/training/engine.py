"""The distributed engine: Hugging Face Accelerate for the process group, the device, mixed
precision, DDP and DeepSpeed; torch's FSDP2 (``fully_shard``) for ``fsdp``.

Why ``fsdp`` is not Accelerate's plugin: Accelerate turns FSDP on only on accelerators (on a CPU
its backend choice is MULTI_CPU, which has no FSDP), and the pipeline tests every strategy it
ships that can run here on CPU processes. ``fully_shard`` is what Accelerate's own FSDP2 path
calls; applying it here gives one code path on CPUs and GPUs.

Loss scaling contract (``training.loop``): each rank back-propagates ``world x`` its share of the
global loss; DDP and FSDP average gradients over ranks, so the optimiser sees the gradient of
the global loss, exactly as one process with the whole batch would.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vmad_pipeline.configs.train import EngineConfig
from vmad_pipeline.placement import autocast

log = logging.getLogger(__name__)
CONF_DIR = Path("conf") / "engine"  # the DeepSpeed configs shipped for the real preset


@dataclass
class Engine:
    accelerator: object  # accelerate.Accelerator
    strategy: str
    model: nn.Module  # what the loop calls: DDP, FSDP or DeepSpeed wrapped, or the model itself
    optimizer: torch.optim.Optimizer
    dtype: torch.dtype  # the compute precision (autocast to it unless fp32)
    accum: int = 1  # micro-batches per optimiser step

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def backward(self, loss: torch.Tensor) -> None:
        if self.strategy.startswith("deepspeed"):
            loss = loss * self.accum  # DeepSpeed divides by its accumulation steps; ours is exact
        self.accelerator.backward(loss)

    def sync(self, sync: bool):
        """Gradients are reduced over ranks only when ``sync`` (the last micro-batch of a step)."""
        if self.world == 1 or sync:
            return contextlib.nullcontext()
        if self.strategy == "fsdp":
            return _fsdp_no_sync(self.model)
        return self.accelerator.no_sync(self.model)

    def autocast(self):
        return autocast(self.device, self.dtype)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over ranks (float64 on the CPU: counts stay exact)."""
        if self.world == 1:
            return values
        return self.accelerator.reduce(values.to(self.device), reduction="sum").cpu()

    def gather_objects(self, obj) -> list:
        """``obj`` of every rank, in rank order."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def clip(self, parameters, max_norm: float) -> None:
        if self.strategy.startswith("deepspeed"):
            return  # DeepSpeed clips with its config's gradient_clipping
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def make_accelerator(cfg: EngineConfig, device: str, ds_settings: dict):
    """The Accelerator of this process: CPU processes (gloo) unless CUDA is used.
    ``ds_settings``: what DeepSpeed's config must agree on with the training parameters."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if cfg.processes > 1 and device.startswith("cuda:"):
        raise ValueError(
            f"train.device {device!r} names one GPU; with engine.processes > 1 use auto or cuda"
        )
    if device.startswith("cuda:"):  # one process on a named GPU: Accelerate takes the current
        torch.cuda.set_device(torch.device(device))
    kwargs = {}
    if cfg.strategy.startswith("deepspeed"):
        kwargs["deepspeed_plugin"] = deepspeed_plugin(cfg, cpu, ds_settings)
    # Buffers (DSSL's queues) are kept equal by the gathered enqueue, not by rank 0's copy;
    # samples without [SEG] leave the mask decoder unused in some micro-batches.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
    # Mixed precision is ours (placement.autocast over weights placed by placement.place_model),
    # not Accelerate's: its setting is fixed once per process, and one process may train
    # several models (the ablation, the tests) in different precisions.
    return Accelerator(cpu=cpu, mixed_precision="no", kwargs_handlers=[ddp], **kwargs)


def deepspeed_config_path(cfg: EngineConfig) -> Path:
    return Path(cfg.deepspeed_config) if cfg.deepspeed_config else CONF_DIR / f"{cfg.strategy}.json"


def check_strategy(cfg: EngineConfig, cpu: bool) -> None:
    """Refuse, before any model is built or process started, a strategy this machine cannot run:
    DeepSpeed needs CUDA, the ``deepspeed`` package and its JSON config."""
    import importlib.util

    if not cfg.strategy.startswith("deepspeed"):
        return
    if cpu:
        raise RuntimeError(f"engine.strategy {cfg.strategy} needs CUDA GPUs; use ddp or fsdp")
    if importlib.util.find_spec("deepspeed") is None:
        raise RuntimeError(
            f"engine.strategy {cfg.strategy} needs the deepspeed package: pip install deepspeed"
        )
    if not deepspeed_config_path(cfg).is_file():
        raise FileNotFoundError(f"no DeepSpeed config at {deepspeed_config_path(cfg)}")


def deepspeed_plugin(cfg: EngineConfig, cpu: bool, settings: dict):
    """Accelerate's DeepSpeed plugin from the strategy's JSON config, with the batch, accumulation,
    clipping and precision of the training parameters written in (``settings``). Untested on
    the CPU machines, which cannot run DeepSpeed."""
    from accelerate.utils import DeepSpeedPlugin

    check_strategy(cfg, cpu)
    return DeepSpeedPlugin(hf_ds_config=deepspeed_config(deepspeed_config_path(cfg), settings))


def deepspeed_config(path: Path, settings: dict) -> dict:
    """The JSON config at ``path`` with ``settings`` (micro batch, accumulation, clipping, bf16)
    written over its keys."""
    import json

    config = json.loads(path.read_text())
    config.update(
        train_micro_batch_size_per_gpu=settings["micro_batch"],
        gradient_accumulation_steps=settings["accum"],
        gradient_clipping=settings["grad_clip"],
        bf16={"enabled": settings["bf16"]},
    )
    return config


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one: the LLM's decoder layers (most of a 7B's weights);
    the rest of the model is the root unit."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def apply_fsdp(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """FSDP2 over this process group: each decoder layer a unit, then the root."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def wrap(
    accelerator, model: nn.Module, optimizer, strategy: str, dtype: torch.dtype, accum: int
) -> Engine:
    """The engine over a placed model and its optimiser (built on the model's parameters; FSDP
    shards those parameters in place, so the optimiser is built after sharding: see
    ``build_optimizer``)."""
    if strategy == "fsdp" and accelerator.num_processes > 1:
        apply_fsdp(model, accelerator.device, dtype)
        return Engine(accelerator, strategy, model, optimizer(model), dtype, accum)
    opt = optimizer(model)
    if strategy.startswith("deepspeed"):
        model, opt = accelerator.prepare(model, opt)
    elif accelerator.num_processes > 1:
        model = accelerator.prepare_model(model)
    return Engine(accelerator, strategy, model, opt, dtype, accum)


# --------------------------------------------------------------------------- states
# torch.distributed.checkpoint's state-dict helpers read and write full (unsharded) states of a
# plain, DDP or FSDP2 model alike; only trainable weights and buffers are kept (a LoRA run's
# checkpoint is megabytes, not the frozen 7B). Collective: every rank calls them.


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def model_state(engine: Engine) -> dict[str, torch.Tensor]:
    """Trainable weights and persistent buffers, full, on the CPU (rank 0 holds them)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(engine.model, options=_options(ignore_frozen_params=True))
    return {k: v.detach().clone() for k, v in state.items()}


def load_model_state(engine: Engine, state: dict[str, torch.Tensor]) -> None:
    """The inverse of :func:`model_state`; every trainable key must be there."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    if engine.world == 1:  # the keys only: no copy of the weights
        options = _options(ignore_frozen_params=True)
        expected = set(get_model_state_dict(engine.model, options=options))
    else:
        expected = None
    if expected is not None and expected != set(state):
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"training state mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    set_model_state_dict(engine.model, state, options=_options(strict=False))


def optimizer_state(engine: Engine) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if engine.strategy.startswith("deepspeed"):
        return {}  # DeepSpeed partitions it; see docs/training.md
    return get_optimizer_state_dict(engine.model, engine.optimizer, options=_options())


def load_optimizer_state(engine: Engine, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if not state:
        log.warning("no optimiser state in the checkpoint (DeepSpeed): its moments start anew")
        return
    # not strict: a trainable weight the forward pass never uses (a CLIP tower's last norm)
    # has no moments to restore
    set_optimizer_state_dict(engine.model, engine.optimizer, state, options=_options(strict=False))
