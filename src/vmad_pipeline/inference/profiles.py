"""Product profiles: k normal images of one product, turned once into what the detector compares
with (docs/references.md).

A profile holds the references' patch features (a coreset past the model's ``max_patches``),
the image threshold chosen from the references alone (their leave-one-out scores), the images'
names and SHA-256, the backbone the features come from and the fingerprint of the model whose
scores chose the threshold. It is used only with that backbone and model: the features of
another backbone are another space, and another model's scores another scale.

On disk: ``<folder>/<name>/profile.json`` and ``memory.safetensors``, written as one directory
swap (``atomic.atomic_directory``): a reader sees the old profile or the new one.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import torch

from vmad_pipeline.configs.profile import NAME
from vmad_pipeline.configs.profile import check_name as configs_check_name
from vmad_pipeline.inference.references import (
    References,
    ReferenceSet,
    batch_references,
    left_out_note,
    reference_set,
    shots_from_images,
)
from vmad_pipeline.models.build import FROM_WEIGHT_FILES
from vmad_pipeline.models.pretrained import weights_fingerprint
from vmad_pipeline.models.references import views

log = logging.getLogger(__name__)
MAX_IMAGES = 200  # references of one profile: more are refused (the message says so)
FORMAT = 1


class ProfileError(ValueError):
    """A profile that cannot be built or used here (the message says why and what to do)."""


def check_name(name: str) -> str:
    """:func:`configs.profile.check_name`, as a ProfileError."""
    try:
        return configs_check_name(name)
    except ValueError as err:
        raise ProfileError(str(err)) from err


def backbone_identity(model) -> dict[str, Any]:
    """What the references' features depend on: the preset's backbone, its input size and the
    comparison's feature rule (levels, stride)."""
    cfg = model.config
    return {
        "preset": cfg.preset,
        "image_size": cfg.vision.image_size,
        "levels": list(cfg.references.levels),
        "stride": cfg.references.stride,
        "weights_files": weights_fingerprint(cfg) if cfg.preset in FROM_WEIGHT_FILES else {},
    }


def reference_views(model) -> int:
    """How many views of each reference the model's memories hold."""
    return views(model.config.references.flips)


def model_fingerprint(model) -> str:
    """SHA-256 of the model's trained weights and buffers, each rounded to bf16 first (a model
    cast to bf16 on a GPU and the same model in fp32 on a CPU have one fingerprint); frozen
    parameters (the backbones rebuilt from packages or weight files) left out."""
    digest = hashlib.sha256()
    kept = {n for n, p in model.named_parameters() if p.requires_grad}
    kept |= {n for n, _ in model.named_buffers()}
    for name, value in sorted(model.state_dict().items()):
        if name not in kept:
            continue
        digest.update(name.encode())
        digest.update(value.detach().to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Profile:
    name: str
    category: str
    memory: torch.Tensor  # M x C
    threshold: float | None
    loo_scores: list[float]
    rule: str
    images: list[dict[str, str]]  # {"name", "sha256"} of every reference
    backbone: dict[str, Any]
    model: str  # model_fingerprint of the model that chose the threshold
    meta: dict[str, Any] = field(default_factory=dict)  # created, format, ...
    normal_distance: float | None = None  # the references' median patch distance to each other
    # the images left out as anomalous against the others (inference.references.outliers)
    left_out: list[str] = field(default_factory=list)
    views: int = 1  # each reference's views in the memory: 4 with the model's references.flips

    def reference_set(self) -> ReferenceSet:
        names = [im["name"] for im in self.images]
        return ReferenceSet(
            self.memory,
            len(self.images),
            self.threshold,
            list(self.loo_scores),
            self.rule,
            self.normal_distance,
            [names.index(n) for n in self.left_out if n in names],
        )

    def references(self) -> References:
        """The profile as the detector reads it, labelled ``profile:<name>`` (and what was left
        out, :func:`inference.references.left_out_note`)."""
        shots = self.reference_set()
        return References("shots", f"profile:{self.name}{left_out_note(shots)}", shots=shots)

    def check_usable(self, model, fingerprint: str | None = None) -> None:
        """Refuse (ProfileError) a profile built for another backbone or model."""
        found = backbone_identity(model)
        if found != self.backbone:
            raise ProfileError(
                f"profile {self.name!r} was built on backbone {self.backbone}, this model reads "
                f"{found}: rebuild it (kedro run --pipeline profile)"
            )
        reads = reference_views(model)
        if reads != self.views:
            raise ProfileError(
                f"profile {self.name!r} holds each reference in {self.views} view(s), this model "
                f"reads {reads} (train.model.references.flips): rebuild it (kedro run --pipeline "
                "profile)"
            )
        if (fingerprint or model_fingerprint(model)) != self.model:
            raise ProfileError(
                f"profile {self.name!r} was built for another model (its threshold is on that "
                "model's scores): rebuild it with this one (kedro run --pipeline profile)"
            )

    def summary(self) -> dict[str, Any]:
        """profile.json: everything but the memory."""
        out = dataclasses.asdict(self)
        out.pop("memory")
        out["n_patches"], out["dim"] = (int(s) for s in self.memory.shape)
        return out


def build_profile(
    detector,
    name: str,
    category: str,
    images: torch.Tensor,
    files: list[tuple[str, bytes]],
    *,
    rule: str,
    seed: int = 0,
) -> Profile:
    """A profile of ``images`` (k x 3 x S x S uint8 at the detector's input size; ``files``:
    each one's name and bytes, for its SHA-256)."""
    import time
    from datetime import datetime

    start = time.perf_counter()
    check_name(name)
    if not len(images):
        raise ProfileError(f"profile {name!r}: no reference images")
    if len(images) > MAX_IMAGES:
        raise ProfileError(
            f"profile {name!r}: {len(images)} reference images, at most {MAX_IMAGES} (a coreset of "
            "their patches is kept; more add time, not accuracy)"
        )
    model = detector.model
    if model.cue is None:
        raise ProfileError("this model reads no references (train.model.references.enabled)")
    floor = detector.thresholds.get("image_threshold")  # never laxer than the model alone
    refs = reference_set(detector.predictor, images, category, rule=rule, seed=seed, floor=floor)
    hashes = [{"name": n, "sha256": hashlib.sha256(b).hexdigest()} for n, b in files]
    left_out = [files[i][0] for i in refs.left_out]
    if left_out:
        log.warning(
            "profile %r: %s left out: anomalous against the other references (their threshold "
            "would rise to its score); check %s",
            name,
            ", ".join(left_out),
            "it" if len(left_out) == 1 else "them",
        )
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return Profile(
        name=name,
        category=category,
        memory=refs.memory.float().cpu().contiguous(),
        threshold=refs.threshold,
        loo_scores=refs.loo_scores,
        rule=rule,
        images=hashes,
        backbone=backbone_identity(model),
        model=model_fingerprint(model),
        normal_distance=refs.normal_distance,
        left_out=left_out,
        views=reference_views(model),
        meta={
            "format": FORMAT,
            "created": created,
            "build_seconds": round(time.perf_counter() - start, 2),  # features, coreset, LOO
        },
    )


def save_profile(profile: Profile, folder: str | Path) -> Path:
    """``<folder>/<name>/``, swapped in whole."""
    from safetensors.torch import save_file

    from vmad_pipeline.atomic import atomic_directory

    target = Path(folder) / check_name(profile.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(target) as tmp:
        save_file({"memory": profile.memory}, str(tmp / "memory.safetensors"))
        (tmp / "profile.json").write_text(json.dumps(profile.summary(), indent=2))
    return target


def load_profile(folder: str | Path, name: str) -> Profile:
    """The profile ``name`` under ``folder``; ProfileError naming what is missing or broken."""
    from safetensors.torch import load_file

    path = Path(folder) / check_name(name)
    try:
        summary = json.loads((path / "profile.json").read_text())
        memory = load_file(str(path / "memory.safetensors"))["memory"]
    except FileNotFoundError as err:
        known = (
            sorted(p.name for p in Path(folder).glob("*/profile.json"))
            if Path(folder).is_dir()
            else []
        )
        raise ProfileError(
            f"no profile {name!r} under {folder} (known: {', '.join(known) or 'none'}); build it: "
            f'kedro run --pipeline profile --params "profile.name={name},..."'
        ) from err
    except (ValueError, KeyError, OSError) as err:
        raise ProfileError(f"profile {name!r} at {path} is unreadable: {err}") from err
    if summary.get("meta", {}).get("format") != FORMAT:
        raise ProfileError(f"profile {name!r} has format {summary.get('meta')}, expected {FORMAT}")
    shape = (summary.get("n_patches"), summary.get("dim"))
    if tuple(memory.shape) != shape or not torch.isfinite(memory).all():
        raise ProfileError(f"profile {name!r}: its memory does not match profile.json {shape}")
    fields = {f.name for f in dataclasses.fields(Profile)} - {"memory"}
    return Profile(memory=memory, **{k: summary[k] for k in fields if k in summary})


def read_references(spec: str, max_pixels: int) -> list[tuple[str, bytes, Any]]:
    """The reference images a folder or glob names: (name, file bytes, H x W x 3 uint8) each. An
    empty folder, too many images, an unreadable or oversized one: ProfileError naming it
    (nothing is built from a partial set)."""
    from vmad_pipeline.inference.batch import list_inputs, read_item

    try:
        items = list_inputs(spec)
    except (FileNotFoundError, ValueError) as err:
        raise ProfileError(f"profile.images: {err}") from err
    if len(items) > MAX_IMAGES:
        raise ProfileError(
            f"profile.images {spec!r}: {len(items)} images, at most {MAX_IMAGES} (a coreset of "
            "their patches is kept; more add time, not accuracy)"
        )
    out = []
    for it in items:
        try:
            image = read_item(it, max_pixels, limit="profile.max_pixels")
            out.append((it.path.name, it.path.read_bytes(), image))
        except (ValueError, OSError) as err:
            raise ProfileError(f"profile.images: {it.path}: {err}") from err
    return out


def resolve_references(
    detector,
    spec: str | None,
    items: list,
    *,
    profiles: str,
    max_pixels: int,
    rule: str,
    seed: int = 0,
    category: str | None = None,
):
    """``predict.references`` for ``items`` (``inference.batch.Item``) as
    ``inference.references.References``: None, ``batch``, a profile's name under ``profiles`` or
    a folder / glob of normal images; a clear error for a model without the reference cue, an
    unknown name, a profile of another backbone or model."""
    from vmad_pipeline.inference.batch import read_item

    if not spec:
        return None
    if detector.model.cue is None:
        raise ValueError(
            "predict.references: this model reads no references (train it with "
            "train.model.references.enabled: true)"
        )
    if spec == "batch":
        by_key = {it.key: it for it in items}

        def load(keys):
            kept, images = [], []
            for key in keys:
                try:
                    images.append(detector.tensor(read_item(by_key[key], max_pixels)))
                    kept.append(key)
                except ValueError:
                    continue  # it gets its error line when it is predicted
            return kept, torch.stack(images) if images else None

        keys, cats = [it.key for it in items], [it.category for it in items]
        return batch_references(detector.predictor, keys, cats, load, seed=seed)
    if NAME.fullmatch(spec) and (Path(profiles) / spec / "profile.json").is_file():
        profile = load_profile(profiles, spec)
        profile.check_usable(detector.model)
        return profile.references()
    if not Path(spec).exists() and not glob.glob(spec, recursive=True):
        raise FileNotFoundError(
            f"predict.references {spec!r}: neither batch, a profile under {profiles}, a folder "
            "nor a glob of images"
        )
    files = read_references(spec, max_pixels)
    category = category or (items[0].category if items else "object")  # the question's name
    images = [image for _, _, image in files]
    return shots_from_images(detector, images, category, rule=rule, label=spec, seed=seed)
