"""The MLflow pyfunc model: ``mlflow.pyfunc.load_model("models:/vmad/<version>").predict(df)``.

Input: a DataFrame with a column ``image`` holding image file paths or base64-encoded image
bytes, and optionally ``category`` (the object name used in the prompt; default "object").
Output: a DataFrame with ``score`` (image anomaly score), ``answer`` (generated text),
``seg_found`` and ``anomaly_map`` (H x W nested lists of floats in [0, 1]).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from PIL import Image


def _read_image(value: str | bytes, size: int) -> np.ndarray:
    if isinstance(value, bytes):
        data = value
    elif len(value) < 1024 and Path(value).is_file():
        data = Path(value).read_bytes()
    else:
        try:
            data = base64.b64decode(value, validate=True)
        except ValueError as err:
            raise ValueError("image: expected a file path or base64-encoded image bytes") from err
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))


class VmadPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from vmad_pipeline.inference.predictor import Predictor
        from vmad_pipeline.models.build import load_checkpoint

        model, tokenizer = load_checkpoint(context.artifacts["checkpoint"])
        self.predictor = Predictor(model, tokenizer)
        self.size = model.config.sam.image_size

    def predict(
        self, context, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        if "image" not in model_input.columns:
            raise ValueError("model input needs a column 'image' (file path or base64 bytes)")
        images = np.stack([_read_image(v, self.size) for v in model_input["image"]])
        cats = (
            list(model_input["category"])
            if "category" in model_input.columns
            else ["object"] * len(images)
        )
        pred = self.predictor.predict(
            torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), cats, output_size=self.size
        )
        return pd.DataFrame(
            {
                "score": pred.scores.astype(float),
                "answer": pred.answers,
                "seg_found": pred.seg_found.astype(bool),
                "anomaly_map": [np.round(m, 4).tolist() for m in pred.maps],
            }
        )
