"""The MLflow pyfunc model: ``mlflow.pyfunc.load_model("models:/vmad/<version>").predict(df)``.

Input: a DataFrame with a column ``image`` holding image file paths or base64-encoded image
bytes, and optionally ``category`` (the object name used in the prompt; default "object").
Output: a DataFrame with ``score`` (image anomaly score, by the score rule the model was
registered with: the evaluate parameters' ``score_source``, ``fusion_weight`` and
``max_new_tokens``, logged as its ``model_config``), ``anomalous`` (score >= the threshold
calibrated with the model, ``inference.calibrate``), ``p_yes`` (P("Yes") against P("No") as the
detection answer's first word), ``answer`` (generated text), ``seg_found`` and ``anomaly_map``
(H x W nested lists of floats in [0, 1]).

The real preset rebuilds its frozen backbone from local weight files: pass them as
``model_config={"weights": {"llava_dir": ..., "sam_checkpoint": ...}}`` to ``load_model``, or set
``VMAD_LLAVA_DIR`` and ``VMAD_SAM_CHECKPOINT`` (e.g. for ``mlflow models serve``).
"""

import base64
import os
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from vmad_pipeline.configs.evaluate import EvaluateConfig, ScoreRule
from vmad_pipeline.images import Source, load_batch


def _source(value: str | bytes) -> Source:
    """A file path (short strings naming an existing file) or base64-decoded image bytes."""
    if isinstance(value, bytes):
        return value
    if len(value) < 1024 and Path(value).is_file():
        return Path(value)
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as err:
        raise ValueError("image: expected a file path or base64-encoded image bytes") from err


def _weights(model_config: dict):
    from vmad_pipeline.configs import WeightsConfig, from_dict

    given = dict(model_config.get("weights") or {})
    given.setdefault("llava_dir", os.environ.get("VMAD_LLAVA_DIR"))
    given.setdefault("sam_checkpoint", os.environ.get("VMAD_SAM_CHECKPOINT"))
    return from_dict(WeightsConfig, given, "weights")


def model_config(cfg: EvaluateConfig) -> dict:
    """What the registered model is logged with: the evaluation's score rule and decoding budget,
    so that it scores an image exactly as the evaluation did."""
    return {
        "score_source": cfg.score_source,
        "fusion_weight": cfg.fusion_weight,
        "max_new_tokens": cfg.max_new_tokens,
    }


class VmadPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from vmad_pipeline.inference.predictor import Predictor
        from vmad_pipeline.models.checkpoint import load_checkpoint

        config = dict(context.model_config or {})
        rule = ScoreRule(
            source=config.get("score_source", "map_max"),
            fusion_weight=config.get("fusion_weight", 0.5),
        )
        model, tokenizer = load_checkpoint(
            context.artifacts["checkpoint"], weights=_weights(config)
        )
        self.predictor = Predictor(
            model,
            tokenizer,
            rule=rule,
            max_new_tokens=int(config.get("max_new_tokens", EvaluateConfig.max_new_tokens)),
        )
        from vmad_pipeline.inference.calibrate import thresholds

        self.threshold = thresholds(model.decision, rule.source)["image_threshold"]

    def predict(
        self, context, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        """model_input: a DataFrame (see the module docstring) -> a DataFrame, one row per image
        (the registered model's explicit signature names the columns)."""
        if "image" not in model_input.columns:
            raise ValueError("model input needs a column 'image' (file path or base64 bytes)")
        size = self.predictor.image_size
        images, _ = load_batch([_source(v) for v in model_input["image"]], None, size)
        cats = (
            list(model_input["category"])
            if "category" in model_input.columns
            else ["object"] * len(images)
        )
        pred = self.predictor.predict(images, cats, output_size=size)
        return pd.DataFrame(
            {
                "score": pred.scores.astype(float),
                "anomalous": pred.scores >= self.threshold,  # the model's calibrated threshold
                "p_yes": pred.p_yes.astype(float),
                "answer": pred.answers,
                "seg_found": pred.seg_found.astype(bool),
                "anomaly_map": [np.round(m, 4).tolist() for m in pred.maps],
            }
        )


def signature():
    """Input: ``image`` (path or base64), optional ``category``; output: ``score``,
    ``anomalous``, ``p_yes``,
    ``answer``, ``seg_found``, ``anomaly_map``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(DataType.string, "image"),
                ColSpec(DataType.string, "category", required=False),
            ]
        ),
        outputs=Schema(
            [
                ColSpec(DataType.double, "score"),
                ColSpec(DataType.boolean, "anomalous"),
                ColSpec(DataType.double, "p_yes"),
                ColSpec(DataType.string, "answer"),
                ColSpec(DataType.boolean, "seg_found"),
                ColSpec(Array(Array(DataType.double)), "anomaly_map"),
            ]
        ),
    )
