"""One trained detector as every product surface uses it: ``kedro run --pipeline predict``, the
registered model behind ``mlflow models serve``, ``vmad-pipeline chat`` and the web demo score an
image, decide and draw its mask here, with the thresholds stored with the model
(``inference.calibrate``), so that one image gets one answer everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vmad_pipeline.images import resize_rgb
from vmad_pipeline.metrics.text import parse_defect_type, parse_location


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
    square_map: np.ndarray  # S x S float32: the map at the model's input size
    answer_ids: list[int]  # the generated tokens (a conversation's first turn)
    # Anomaly-OV's expert, when the model has one: its map x 255 at the image's size, its score
    significance: np.ndarray | None = None
    expert_score: float | None = None

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
    """A :class:`~vmad_pipeline.inference.predictor.Predictor` with its decision thresholds."""

    def __init__(
        self, predictor, *, image_threshold: float, pixel_threshold: float, taxonomy=None
    ) -> None:
        self.predictor = predictor
        self.image_threshold, self.pixel_threshold = float(image_threshold), float(pixel_threshold)
        self.taxonomy = taxonomy
        self.thresholds: dict = {}  # where the thresholds came from (inference.calibrate)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint,
        weights,
        evaluate,
        *,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        device: str = "auto",
        precision: str = "auto",
        taxonomy=None,
    ) -> Detector:
        """The checkpoint's model (``models.checkpoint.Checkpoint``; ``weights``: this machine's
        weight paths) scoring by ``evaluate``'s rule and decoding budget, deciding with the
        given thresholds, else the ones calibrated with it (``inference.calibrate.thresholds``)."""
        from vmad_pipeline.inference.calibrate import thresholds
        from vmad_pipeline.inference.predictor import Predictor

        chosen = thresholds(
            checkpoint.decision, evaluate.score_source, image_threshold, pixel_threshold
        )
        predictor = Predictor.from_checkpoint(
            checkpoint,
            weights,
            rule=evaluate.score_rule,
            max_new_tokens=evaluate.max_new_tokens,
            device=device,
            precision=precision,
        )
        out = cls(
            predictor,
            image_threshold=chosen["image_threshold"],
            pixel_threshold=chosen["pixel_threshold"],
            taxonomy=taxonomy,
        )
        out.thresholds = chosen
        return out

    @property
    def image_size(self) -> int:
        return self.predictor.image_size

    def tensor(self, original: np.ndarray) -> torch.Tensor:
        """An H x W x 3 uint8 image as the model reads it: 3 x S x S uint8."""
        return torch.from_numpy(resize_rgb(original, self.image_size)).permute(2, 0, 1)

    def inspect(self, originals: list[np.ndarray], categories: list[str]) -> list[Inspection]:
        """Score, decide, answer and draw each image (H x W x 3 uint8, any size) in one batch."""
        if len(originals) != len(categories):
            raise ValueError(f"{len(originals)} images but {len(categories)} object names")
        if not originals:
            return []
        size = self.image_size
        batch = torch.stack([self.tensor(o) for o in originals])
        pred = self.predictor.predict(batch, list(categories), output_size=size)
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
                    anomalous=score >= self.image_threshold,
                    p_yes=float(pred.p_yes[k]),
                    answer=answer,
                    seg_found=bool(pred.seg_found[k]),
                    location=parse_location(answer),
                    defect_type=defect.name if defect is not None else None,
                    mask=pics["masks"],
                    map=pics["maps"],
                    overlay=pics["overlays"],
                    square_map=pred.maps[k],
                    answer_ids=list(pred.answer_ids[k]) if pred.answer_ids else [],
                    significance=expert,
                    expert_score=None
                    if pred.expert_scores is None
                    else float(pred.expert_scores[k]),
                )
            )
        return out
