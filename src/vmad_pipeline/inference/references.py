"""Normal references as the detector reads them (docs/references.md): one code path, three modes.

* ``none``: zero-shot, no references;
* ``shots``: k normal images of the product, given by the user: their patches (a coreset past
  the model's ``max_patches``) are one memory that every image of that product is compared with;
  with two or more, each reference scored against the others gives the product's image
  threshold, chosen from normal images alone (:func:`evaluation.threshold_rules.references_threshold`);
  with one, read with its flips, each of its views scored against the other three does;
* ``batch``: no labels; each image is compared with other images of the same product in the
  input (MuSc's setting, Li et al., ICLR 2024: valid when most of them are normal): the half of
  a seeded draw that the model, each against the others, finds most normal (a pool of up to
  :data:`BATCH_REFERENCES` + 1), minus the image itself.

References given by the user (shots, profiles, MMAD's template) are read with their flips when
the model's ``references.flips`` is on (``Predictor.reference_features``); batch pools are not.

Every mode ends as one memory of patches per image (or None), which
:meth:`models.vmad.VmadModel.predict` reads through the reference cue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vmad_pipeline.evaluation.threshold_rules import references_threshold
from vmad_pipeline.models.references import FLIPS, NormalMemory, flipped, patches

MODES = ("none", "shots", "batch")
# Up to this many references, each is scored against every patch of the others; past it,
# against the others' patches in the memory (the coreset): a 100-image profile's 100
# comparisons with 99 x 1,024 patches each cost 29 s on 2 cores.
EXACT_LOO = 16
# An image whose median patch distance to the references is beyond FAR times theirs to each
# other is reported as unlike them (references of another product?); chosen in
# benchmarks/results/references_far.json: with flipped references, images of the references'
# own product score up to 2.05 (1.76 without flips), other products' from 1.18 (median 3.17);
# past 2.25: none of the 110 same-product images, 71% of the 440 others.
FAR = 2.25
UNLIKE = "unlike its references: are they of this product?"  # what a user reads then
# A reference is left out as anomalous (:func:`outliers`) only among this many or more: with
# fewer, a normal reference unlike the others cannot be told from a defective one. Measured: a
# normal pcb of another layout scored 0.67 to 0.90 against three others (the default split's
# k = 4 draw, seeds 0 to 2); leaving it out took the k = 4 decision's FPR from 0.067 to 0.173
# (benchmarks/results/references.json at 68776e2, docs/references.md).
MIN_FOR_OUTLIERS = 5
OUTLIER_RATIO = 2.0
OUTLIER_GAP = 0.15  # on the image score's 0-1 scale
# and only a reference the model, against the others, scores as more likely anomalous than not:
# on the transfer tree two normal references (0.41, 0.29) passed the other tests
OUTLIER_LEVEL = 0.5
# Normal references one inspection carries inline (a demo's uploads, a REST request's
# ``references``): each is decoded at full size in memory; more go into a profile.
INLINE_REFERENCES = 16
# Batch mode compares an image with at most this many other images of its product (a seeded
# pool): each brings all its patches (no coreset, which would cost seconds per image).
BATCH_REFERENCES = 16
# ... the BATCH_KEEP share of a seeded draw of up to BATCH_CANDIDATES, the one the model, each
# image against the others, scores most normal (from BATCH_MIN_TO_PRUNE images up). Measured
# on the default split's unseen classes (22 test images a class, 45% normal), seeds 0 / 1 / 2:
# image AUROC 0.972 / 0.978 / 0.990 with every image as a reference, 0.983 / 0.987 / 0.997 with
# the most normal half (0.978 / - / - with 70%); docs/references.md.
BATCH_CANDIDATES = 2 * BATCH_REFERENCES + 1
BATCH_KEEP = 0.5
BATCH_MIN_TO_PRUNE = 8  # fewer: all kept (half of them would leave too few to compare with)


@dataclass
class ReferenceSet:
    """The normal references of one product, as the detector reads them."""

    memory: torch.Tensor  # M x C: their patches (a coreset past max_patches)
    n_images: int
    # the references-only image threshold (None: one reference without flips)
    threshold: float | None = None
    # each reference against the others; one reference: each of its views against the others
    loo_scores: list[float] = field(default_factory=list)
    rule: str = ""
    # the references' median patch distance to the others (k >= 2): what "this product" is
    normal_distance: float | None = None
    # references left out as anomalous against the others (:func:`outliers`), by index
    left_out: list[int] = field(default_factory=list)


def reference_set(
    predictor,
    images: torch.Tensor,
    category: str,
    *,
    rule: str,
    seed: int = 0,
    output_size: int | None = None,
    floor: float | None = None,
) -> ReferenceSet:
    """The references (k x 3 x S x S uint8) of ``category``: their memory and, with k >= 2, the
    image threshold ``rule`` chooses from their leave-one-out scores (each reference inspected
    by the model against the others, its map at ``output_size``, the size the images it decides
    on are scored at: a map's peak depends on it; default: the model's input size); with one
    reference read with its flips, from its views' (:func:`_views_against_each_other`). ``floor``:
    the lowest the threshold may be (the model's own calibrated one: references can make the
    model stricter than it is alone, never laxer)."""
    if not len(images):
        raise ValueError(f"no reference images for {category!r}")
    feats = predictor.reference_features(images)
    cap = predictor.model.config.references.max_patches
    built = NormalMemory.build(feats, max_patches=cap, seed=seed)
    loo: list[float] = []
    normal, dropped = None, []
    if len(images) >= 2:
        if len(images) <= EXACT_LOO:  # each against every patch of the others
            others = _the_others(feats)
        else:  # each against the memory's patches of the others
            others = [built.patches[built.owners != i] for i in range(len(feats))]
        pred = _each_against(predictor, images, category, others, output_size)
        loo = [float(s) for s in pred.scores]
        dropped = outliers(loo, floor)
        keep = [i for i in range(len(loo)) if i not in dropped]
        normal = float(np.median(pred.reference_distance[keep]))
        if dropped:  # the kept references' scores stand (the others' memory held the outlier's
            # normal regions too: they can only have been lower), their memory is rebuilt
            built = NormalMemory.build(feats[keep], max_patches=cap, seed=seed)
    elif predictor.model.config.references.flips:
        pred = _views_against_each_other(predictor, images, feats, category, output_size)
        loo = [float(s) for s in pred.scores]
    kept = [score for i, score in enumerate(loo) if i not in dropped]
    threshold = references_threshold(np.array(kept), rule)
    if threshold is not None and floor is not None:
        threshold = max(threshold, float(floor))
    return ReferenceSet(built.patches, len(images), threshold, loo, rule, normal, dropped)


def _the_others(feats: torch.Tensor) -> list[torch.Tensor]:
    """For each of n images' features, the patches of the other n - 1 (its views with it)."""
    return [patches(torch.cat([feats[:i], feats[i + 1 :]])) for i in range(len(feats))]


def _views_against_each_other(predictor, image, feats, category: str, output_size: int | None):
    """One reference read with its flips: each of its views (:data:`FLIPS`) against the patches
    of the other three, the only normal images there are to compare it with. Their scores give
    a threshold where one reference had none: over the default split's unseen classes (seeds 0
    to 2, `54a545f`'s models), the k = 1 decision's balanced accuracy at loo_max of the four
    views is 0.913 / 0.920 / 0.928, against 0.730 / 0.850 / 0.928 at the model's own calibrated
    threshold (docs/references.md). Not the references' "normal distance": views of one image
    are closer to each other than two images are, so the "unlike" rule keeps needing two."""
    parts = feats.split(feats.shape[-1] // len(FLIPS), dim=-1)
    others = [patches(torch.cat(parts[:v] + parts[v + 1 :], -1)) for v in range(len(parts))]
    return _each_against(predictor, flipped(image), category, others, output_size)


def _each_against(predictor, images, category: str, others, output_size: int | None = None):
    """The model's prediction of each image of one product against its memory in ``others``
    (one per image), its map at ``output_size`` (default: the model's input size)."""
    return predictor.predict(
        images,
        [category] * len(images),
        output_size=output_size or predictor.image_size,
        references=others,
        max_new_tokens=1,  # the score needs the map and P(yes) only
    )


def outliers(loo_scores: list[float], floor: float | None) -> list[int]:
    """The references that look anomalous against the others (a defective image among a user's
    "normal" ones raises the threshold to its own score, and puts its defect into the memory):
    with :data:`MIN_FOR_OUTLIERS` or more, each whose leave-one-out score is past the model's
    own threshold ``floor`` and :data:`OUTLIER_LEVEL`, past :data:`OUTLIER_RATIO` times the
    median of the others' and past the highest of the others by :data:`OUTLIER_GAP`. Never
    half of them or more: references that disagree that much are reported by their threshold,
    not silently halved. Chosen in benchmarks/results/references_outlier.json
    (docs/references.md)."""
    scores = np.asarray(loo_scores, np.float64)
    if len(scores) < MIN_FOR_OUTLIERS:
        return []
    found = []
    for i, score in enumerate(scores):
        others = np.delete(scores, i)
        if (
            score > max(OUTLIER_LEVEL, floor or 0.0)
            and score > OUTLIER_RATIO * np.median(others)
            and score > others.max() + OUTLIER_GAP
        ):
            found.append(i)
    return found if 2 * len(found) < len(scores) else []


@dataclass
class References:
    """What the images of one run are compared with: one product's references (``shots``), or
    per product a pool of its own images (``batch``: an image is compared with the pool minus
    itself). One memory of patches per image either way (:meth:`memories`)."""

    mode: str  # shots | batch
    label: str  # what the references are (a profile name, a folder, "batch")
    shots: ReferenceSet | None = None
    pools: dict[str, tuple[list[str], torch.Tensor]] = field(default_factory=dict)

    def memories(self, keys: list[str], categories: list[str]) -> list[torch.Tensor | None]:
        """Each image's memory (``keys``: the images' identities, as the pools hold them)."""
        if self.mode == "shots":
            return [self.shots.memory] * len(keys)
        out: list[torch.Tensor | None] = []
        for key, category in zip(keys, categories, strict=True):
            pool_keys, feats = self.pools.get(category, ([], None))
            keep = [i for i, k in enumerate(pool_keys) if k != key]
            out.append(patches(feats[keep]) if keep else None)
        return out

    @property
    def threshold(self) -> float | None:
        """The references-only image threshold (shots), else None."""
        return self.shots.threshold if self.shots is not None else None

    @property
    def normal_distance(self) -> float | None:
        """The references' median patch distance to each other (shots with k >= 2)."""
        return self.shots.normal_distance if self.shots is not None else None


def inspection_args(references: References | None, keys: list[str], categories: list[str]):
    """What ``inference.service.Detector.inspect`` reads of the references of images
    (``keys``: their identities, as :meth:`References.memories` takes them): each image's
    memory, the references-only threshold and their own distance to each other; nothing
    (zero-shot) without references."""
    if references is None:
        return {}
    return {
        "memories": references.memories(keys, categories),
        "threshold": references.threshold,
        "normal_distance": references.normal_distance,
    }


def unlike(distance: float | None, normal: float | None) -> bool:
    """An image (its median patch distance to the references) so far from them that they are
    likely of another product: beyond :data:`FAR` times the references' own distance to each
    other; never when either is unknown."""
    return bool(distance is not None and normal and distance > FAR * normal)


def batch_references(
    predictor, keys: list[str], categories: list[str], load, *, seed: int = 0
) -> References:
    """Batch mode: per product, a seeded draw of up to :data:`BATCH_CANDIDATES` of its images
    (all of them when fewer; seeded by ``seed`` and the product's name), each scored by the
    model against the others; the :data:`BATCH_KEEP` share it finds most normal (at most
    :data:`BATCH_REFERENCES` + 1) is the pool, their features kept; each image is compared with
    the pool minus itself. ``load(keys)``: (the keys it could read, their images, uint8 n x 3 x
    S x S). Memory stays bounded whatever the number of images."""
    import zlib

    groups: dict[str, list[str]] = {}
    for key, category in zip(keys, categories, strict=True):
        groups.setdefault(category, []).append(key)
    pools = {}
    for category, members in groups.items():
        if len(members) > BATCH_CANDIDATES:
            rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
            members = sorted(rng.choice(members, BATCH_CANDIDATES, replace=False).tolist())
        kept, images = load(members)
        if not len(kept):
            continue
        # no flips here: with 16 other images of the product they moved image AUROC by
        # -0.003 (seed 0, 0.970 -> 0.967) for 4 x the patches each image is compared with
        feats = predictor.reference_features(images, flips=False)
        best = _most_normal(predictor, images, feats, category)
        pools[category] = ([kept[i] for i in best], feats[best])
    return References("batch", "batch", pools=pools)


def _most_normal(predictor, images: torch.Tensor, feats: torch.Tensor, category: str) -> list[int]:
    """The indices of the :data:`BATCH_KEEP` share of a product's images that the model, each
    against all the others, scores most normal (at most :data:`BATCH_REFERENCES` + 1); all of
    them below :data:`BATCH_MIN_TO_PRUNE`. An anomalous image among the references lends its
    defect's patches to every other image's memory: a like defect elsewhere then looks normal."""
    n = len(images)
    if n < BATCH_MIN_TO_PRUNE:
        return list(range(min(n, BATCH_REFERENCES + 1)))
    pred = _each_against(predictor, images, category, _the_others(feats))
    size = min(BATCH_REFERENCES + 1, max(2, int(np.ceil(BATCH_KEEP * n))))
    return sorted(np.argsort(np.asarray(pred.scores), kind="stable")[:size].tolist())


def row_memories(categories: list[str], sets: dict[str, ReferenceSet]) -> list[torch.Tensor | None]:
    """Shots mode: each image's memory = its product's references (None for a product
    without)."""
    return [sets[c].memory if c in sets else None for c in categories]


def shots_from_images(
    detector, images: list, category: str, *, rule: str, label: str, seed: int = 0
) -> References:
    """Shots mode from normal images (H x W x 3 uint8, any sizes) of ``category``: their memory
    and references-only threshold (never below the detector's own: references make it stricter,
    never laxer). A model without the reference cue is a ValueError."""
    if detector.model.cue is None:
        raise ValueError(
            "this model reads no references (train it with train.model.references.enabled: true)"
        )
    if not images:
        raise ValueError("no reference images")
    stack = torch.stack([detector.tensor(image) for image in images])
    floor = detector.thresholds.get("image_threshold")
    shots = reference_set(detector.predictor, stack, category, rule=rule, seed=seed, floor=floor)
    return References("shots", label + left_out_note(shots), shots=shots)


def left_out_note(shots: ReferenceSet) -> str:
    """What a user reads of references left out (:func:`outliers`), "" when none."""
    if not shots.left_out:
        return ""
    which = ", ".join(f"#{i + 1}" for i in shots.left_out)
    return f" ({which} of {shots.n_images} left out: anomalous against the others)"
