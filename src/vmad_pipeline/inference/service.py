"""One trained detector as every product surface uses it: ``kedro run --pipeline predict``, the
registered model behind ``mlflow models serve``, ``vmad-pipeline chat`` and the web demo score an
image, decide and draw its mask here, with the thresholds stored with the model
(calibrated by ``training.calibration``), so that one image gets one answer everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vmad_pipeline import prompts
from vmad_pipeline.configs.evaluate import EvaluateConfig
from vmad_pipeline.images import resize_rgb
from vmad_pipeline.metrics.text import parse_defect_type, parse_location
from vmad_pipeline.placement import resolve_placement


@dataclass
class Inspection:
    """What the detector says of one image; pictures at the image's own size."""

    score: float
    anomalous: bool  # score >= the image threshold
    p_yes: float
    answer: str  # as a user reads it: no [SEG], no end-of-sequence token
    seg_found: bool  # the answer emitted [SEG] (else the documented fallback drew the map)
    location: str | None  # parsed from the answer
    defect_type: str | None  # parsed from the answer (with a taxonomy)
    mask: np.ndarray  # H x W uint8, 255 where the map >= the pixel threshold
    map: np.ndarray  # H x W uint8, the anomaly map x 255
    overlay: np.ndarray  # H x W x 3 uint8, the mask in red over the image
    square_map: np.ndarray  # S x S float32: the [SEG]'s map at the model's input size
    answer_ids: list[int]  # the generated tokens (a conversation's first turn)
    # Anomaly-OV's expert, when the model has one: its map x 255 at the image's size, its score
    significance: np.ndarray | None = None
    expert_score: float | None = None
    # with references: the image's median patch distance to them, and whether it is so far that
    # they are likely of another product (inference.references.unlike)
    reference_distance: float | None = None
    unlike_references: bool = False
    # the grounding of the answer's words (inference.grounding): the drawn mask's location and
    # the type head's name for it (None: it abstains; False: no head)
    drawn_location: str | None = None
    named_type: str | None | bool = False
    # zero-shot, no place of the image is unlike the rest of it, and its score was multiplied by
    # the model's self_comparison.repeated_score (docs/references.md, "The zero-shot decision")
    repeats_itself: bool = False

    @property
    def mask_fraction(self) -> float:
        """Share of the image's pixels in the mask."""
        return float((self.mask > 0).mean()) if self.mask.size else 0.0


def pictures(image: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The mask, map and overlay arrays at the image's size from a square map ``prob``."""
    h, w = image.shape[:2]
    big = np.asarray(Image.fromarray(prob.astype(np.float32)).resize((w, h), Image.BILINEAR))
    mask = big >= threshold
    overlay = image.copy()
    overlay[mask] = (0.5 * overlay[mask] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
    return {
        "masks": mask.astype(np.uint8) * 255,
        "maps": np.clip(np.rint(big * 255), 0, 255).astype(np.uint8),
        "overlays": overlay,
    }


class Detector:
    """A :class:`~vmad_pipeline.inference.predictor.Predictor` with its decision thresholds.

    Built by one factory, :meth:`for_model` (:meth:`from_checkpoint` loads the model first), for
    every entry point: predict, chat, the demo, the registered model, calibration, evaluation,
    generation and the ablation score an image by the same rule and decide with the same
    thresholds (anomalib's users' most common complaint is an exported model scoring
    differently from the checkpoint; ``tests/unit/inference/test_detector.py`` checks them)."""

    def __init__(
        self, predictor, *, image_threshold: float, pixel_threshold: float, taxonomy=None
    ) -> None:
        self.predictor = predictor
        self.image_threshold, self.pixel_threshold = float(image_threshold), float(pixel_threshold)
        self.taxonomy = taxonomy
        self.thresholds: dict = {}  # where the thresholds came from (decision_thresholds)

    @classmethod
    def for_model(
        cls,
        model,
        tokenizer,
        evaluate: EvaluateConfig,
        *,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        taxonomy=None,
        strict: bool = True,
    ) -> Detector:
        """The one factory: ``model`` scoring by ``evaluate``'s score rule and decoding budget
        (on ``device`` in ``dtype``; default: where it is), deciding with the given thresholds,
        else those calibrated with it (:func:`decision_thresholds`). A model calibrated on
        another score than ``evaluate``'s is refused (``ValueError``) unless ``strict`` is false
        (evaluation: the scores without a decision; ``thresholds`` is then empty)."""
        from vmad_pipeline.inference.predictor import Predictor

        predictor = Predictor(
            model,
            tokenizer,
            rule=evaluate.score_rule,
            max_new_tokens=evaluate.max_new_tokens,
            ground=evaluate.ground_words,
            device=device,
            dtype=dtype,
        )
        try:
            chosen = decision_thresholds(
                model.decision, evaluate.score_rule.source, image_threshold, pixel_threshold
            )
        except ValueError:
            if strict:
                raise
            chosen = {}
        out = cls(
            predictor,
            image_threshold=chosen.get("image_threshold", 0.5),
            pixel_threshold=chosen.get("pixel_threshold", 0.5),
            taxonomy=taxonomy,
        )
        out.thresholds = chosen
        return out

    @classmethod
    def from_checkpoint(cls, checkpoint, weights, evaluate: EvaluateConfig, **options) -> Detector:
        """:meth:`for_model` of the checkpoint's model (``models.checkpoint.Checkpoint``;
        ``weights``: this machine's weight paths), loaded once on ``device`` in ``precision``
        (``auto`` / ``cpu`` / ``cuda`` and ``auto`` / ``fp32`` / ``bf16``; default: the
        ``evaluate`` parameters'); other ``options``: :meth:`for_model`'s."""
        return cls._loaded(lambda dtype: checkpoint.load(weights, dtype=dtype), evaluate, options)

    @classmethod
    def from_export(cls, path, evaluate: EvaluateConfig, **options) -> Detector:
        """:meth:`from_checkpoint` for an exported model (``kedro run --pipeline export``: the
        LoRA merged into the LLM, ``models.checkpoint.load_exported``); peft is not needed."""
        from vmad_pipeline.models.checkpoint import load_exported

        return cls._loaded(lambda dtype: load_exported(path, dtype=dtype), evaluate, options)

    @classmethod
    def _loaded(cls, load, evaluate: EvaluateConfig, options: dict) -> Detector:
        """``load(dtype)`` -> (model, tokenizer), placed by ``options``' ``device`` and
        ``precision`` (default: ``evaluate``'s), then :meth:`for_model` with the rest."""
        device, precision = options.pop("device", None), options.pop("precision", None)
        dev, dtype = resolve_placement(device or evaluate.device, precision or evaluate.precision)
        model, tokenizer = load(dtype)
        return cls.for_model(model, tokenizer, evaluate, device=dev, dtype=dtype, **options)

    @property
    def model(self):
        return self.predictor.model

    @property
    def image_size(self) -> int:
        return self.predictor.image_size

    def tensor(self, original: np.ndarray) -> torch.Tensor:
        """An H x W x 3 uint8 image as the model reads it: 3 x S x S uint8."""
        return torch.from_numpy(resize_rgb(original, self.image_size)).permute(2, 0, 1)

    def inspect(
        self,
        originals: list[np.ndarray],
        categories: list[str],
        *,
        memories: list | None = None,
        threshold: float | None = None,
        normal_distance: float | None = None,
    ) -> list[Inspection]:
        """Score, decide, answer and draw each image (H x W x 3 uint8, any size) in one batch.
        ``memories``: each image's normal references (``inference.references``; None: zero-shot);
        ``threshold``: the image threshold chosen from them (None: the detector's), which the
        answer's Yes / No follows, as it follows the detector's zero-shot;
        ``normal_distance``: their own median patch distance to each other (an image far beyond
        it is reported as unlike them)."""
        from vmad_pipeline.inference.references import unlike

        if len(originals) != len(categories):
            raise ValueError(f"{len(originals)} images but {len(categories)} object names")
        categories = [prompts.object_text(c) for c in categories]  # bounded, no special token
        if not originals:
            return []
        size = self.image_size
        batch = torch.stack([self.tensor(o) for o in originals])
        cut = self.image_threshold if threshold is None else float(threshold)
        # the answer says the decision: zero-shot, or at the references-only threshold (images
        # with references but no such threshold, batch mode, keep the LLM's word, as evaluated)
        zero_shot = [memories is None or memories[i] is None for i in range(len(originals))]
        cuts = [cut if threshold is not None or z else None for z in zero_shot]
        pred = self.predictor.predict(
            batch,
            list(categories),
            output_size=size,
            references=memories,
            thresholds=cuts,
        )
        found = pred.reference_distance
        factors = pred.score_factors if pred.score_factors is not None else np.ones(len(originals))
        distance = [None] * len(originals) if found is None else [float(d) for d in found]
        out = []
        for k, original in enumerate(originals):
            answer, score = pred.answers[k], float(pred.scores[k])
            defect = parse_defect_type(answer, self.taxonomy) if self.taxonomy is not None else None
            pics = pictures(original, pred.maps[k], self.pixel_threshold)
            expert = None
            if pred.significance is not None:
                expert = pictures(original, pred.significance[k], 1.0)["maps"]
            out.append(
                Inspection(
                    score=score,
                    anomalous=score >= cut,
                    p_yes=float(pred.p_yes[k]),
                    answer=answer,
                    seg_found=bool(pred.seg_found[k]),
                    location=parse_location(answer),
                    defect_type=defect.name if defect is not None else None,
                    mask=pics["masks"],
                    map=pics["maps"],
                    overlay=pics["overlays"],
                    square_map=pred.seg_maps()[k],
                    answer_ids=list(pred.answer_ids[k]) if pred.answer_ids else [],
                    significance=expert,
                    expert_score=None
                    if pred.expert_scores is None
                    else float(pred.expert_scores[k]),
                    reference_distance=distance[k],
                    unlike_references=unlike(distance[k], normal_distance),
                    repeats_itself=bool(factors[k] < 1.0),
                    drawn_location=None
                    if pred.drawn_locations is None
                    else pred.drawn_locations[k],
                    named_type=False if pred.named_types is None else pred.named_types[k],
                )
            )
        return out


def decision_thresholds(decision: dict, score_source: str, image=None, pixel=None) -> dict:
    """The thresholds a prediction uses: given ones (parameters) win, else the model's calibrated
    ones (``decision``, stored with it), else 0.5. A calibrated image threshold belongs to the
    score it was chosen on: another ``score_source`` is refused (its scale is another)."""
    calibrated = bool(decision.get("calibrated"))
    source = decision.get("score_source")
    if image is None and calibrated and source != score_source:
        raise ValueError(
            f"the model's image threshold was calibrated on score_source {source!r}, not "
            f"{score_source!r}: set predict.image_threshold, or "
            f"evaluate.score_rule.source={source}"
        )
    how = "calibrated: " if calibrated else "default "
    return {
        "image_threshold": image if image is not None else decision.get("image_threshold", 0.5),
        "pixel_threshold": pixel if pixel is not None else decision.get("pixel_threshold", 0.5),
        "image_from": "parameter"
        if image is not None
        else how + str(decision.get("image_rule", "")),
        "pixel_from": "parameter"
        if pixel is not None
        else how + str(decision.get("pixel_rule", "")),
    }
