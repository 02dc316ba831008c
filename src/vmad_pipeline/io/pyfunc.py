"""The MLflow pyfunc model: ``mlflow.pyfunc.load_model("models:/vmad/<version>").predict(df)``,
and what ``mlflow models serve`` answers.

Input and output columns: ``inference.serving`` (base64 ``image`` or an allowed ``path``,
optional ``category``; score, decision, answer text, [SEG] emitted, location, mask and anomaly
map as PNG base64 at the input's size). The detector is the one every entry point builds
(``inference.service.Detector.from_checkpoint``): scoring by the evaluate parameters'
``score_rule`` and ``max_new_tokens`` the model was registered with (its ``model_config``,
``configs.evaluate.EvaluateConfig.model_config``), deciding with the thresholds calibrated with
the model (``training.calibration``).

A refused request raises an ``MlflowException`` with status 400 and a message for the client;
any other failure is logged here in full and answered with status 500 and no stack trace.

The real preset rebuilds its frozen backbone from local weight files: pass them as
``model_config={"weights": {"llava_dir": ..., "sam_checkpoint": ...}}`` to ``load_model``, or set
``VMAD_LLAVA_DIR`` and ``VMAD_SAM_CHECKPOINT`` (e.g. for ``mlflow models serve``). The serving
limits (``inference.serving.ServeConfig``): ``model_config`` keys ``allowed_root``,
``max_pixels``, ``max_rows``, ``profiles``, or ``VMAD_SERVE_ALLOWED_ROOT`` / ``_MAX_PIXELS`` /
``_MAX_ROWS`` / ``_PROFILES`` (docs/serving.md).
"""

import logging
import os

import mlflow.pyfunc
import pandas as pd

from vmad_pipeline.configs.evaluate import from_model_config
from vmad_pipeline.inference.serving import (
    RequestError,
    ServeConfig,
    as_frame,
    inspect_request,
    read_request,
    request_references,
    response,
)

log = logging.getLogger(__name__)
INLINE_CACHE = 8  # inline reference sets a server keeps thresholded (each: patches, ~1 MB)


def _weights(model_config: dict):
    from vmad_pipeline.configs import WeightsConfig, from_dict

    given = dict(model_config.get("weights") or {})
    given.setdefault("llava_dir", os.environ.get("VMAD_LLAVA_DIR"))
    given.setdefault("sam_checkpoint", os.environ.get("VMAD_SAM_CHECKPOINT"))
    return from_dict(WeightsConfig, given, "weights")


class VmadPyfunc(mlflow.pyfunc.PythonModel):
    # MLflow wraps ``predict`` of a subclass for type-hint validation and, finding no hint, warns
    # when the class is defined (in every run, chat and demo that loads the catalog). The model
    # is registered with its own signature (:func:`signature`), and the request forms it accepts
    # (dict, list, DataFrame: ``inference.serving.as_frame``) have no single hint: the attribute
    # MLflow reads to skip the wrapping (as its own ChatModel subclasses do).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from vmad_pipeline.inference.service import Detector
        from vmad_pipeline.models.checkpoint import Checkpoint

        config = dict(context.model_config or {})
        self.limits = ServeConfig.from_settings(config)
        self.detector = Detector.from_checkpoint(
            Checkpoint(context.artifacts["checkpoint"]), _weights(config), from_model_config(config)
        )
        self._references: dict = {}  # profile name -> References, loaded once, checked once
        # inline references (digest, object name) -> References: a client that sends the same
        # references with every request has them thresholded once (a few, oldest dropped)
        self._inline: dict = {}

    def predict(self, context, model_input, params: dict | None = None) -> pd.DataFrame:
        """Rows in (a DataFrame, a dict of columns or a list of rows; ``inference.serving``) ->
        a DataFrame, one row per image."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import BAD_REQUEST, INTERNAL_ERROR

        try:
            frame = as_frame(model_input)
            images, names = read_request(frame, self.limits)
            sources, inline = request_references(frame, self.limits)
            found, labels, cuts = inspect_request(
                self.detector,
                images,
                names,
                sources,
                lambda key, category: self._load(key, category, inline),
            )
            return response(found, labels, cuts)
        except RequestError as err:
            raise MlflowException(str(err), error_code=BAD_REQUEST) from None
        except Exception as err:  # logged here in full; the client learns nothing internal
            log.exception("prediction failed")
            raise MlflowException(
                f"internal error while predicting ({type(err).__name__}); see the server log",
                error_code=INTERNAL_ERROR,
            ) from None

    def _load(self, key: tuple[str, str], category: str, inline: dict):
        """The references of ``key`` (``inference.serving.request_references``)."""
        kind, name = key
        if kind == "profile":
            return self._profile(name)
        return self._inline_references(name, category, inline[name])

    def _inline_references(self, digest: str, category: str, images: list):
        """A request's own normal images as references (thresholded from themselves alone, as
        the demo's uploads; a RequestError for a model that reads no references)."""
        from vmad_pipeline.configs.evaluate import ReferencesConfig
        from vmad_pipeline.inference.references import shots_from_images

        key = (digest, category)
        if key not in self._inline:
            try:
                refs = shots_from_images(
                    self.detector,
                    images,
                    category,
                    rule=ReferencesConfig().model_threshold,
                    label=f"inline:{len(images)} images",
                )
            except ValueError as err:
                raise RequestError(f"references: {err}") from None
            while len(self._inline) >= INLINE_CACHE:
                self._inline.pop(next(iter(self._inline)))
            self._inline[key] = refs
        return self._inline[key]

    def _profile(self, name: str):
        """The profile ``name`` from the server's folder, as references (a RequestError for an
        unknown one, or one built for another backbone or model)."""
        from vmad_pipeline.inference.profiles import ProfileError, load_profile

        if name not in self._references:
            try:
                profile = load_profile(self.limits.profiles, name)
                profile.check_usable(self.detector.model)
            except ProfileError as err:  # the server's folders stay out of the client's reply
                log.warning("profile %r refused: %s", name, err)
                raise RequestError(
                    f"profile {name!r}: unknown to this server, or built for another model"
                ) from None
            self._references[name] = profile.references()
        return self._references[name]


def signature():
    """The columns of ``inference.serving`` (:data:`INPUTS`, each optional; :data:`OUTPUTS`)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Schema

    from vmad_pipeline.inference.serving import INPUTS, OUTPUTS

    return ModelSignature(
        inputs=Schema(
            [ColSpec(getattr(DataType, t), n, required=False) for n, t in INPUTS.items()]
        ),
        outputs=Schema([ColSpec(getattr(DataType, t), n) for n, t in OUTPUTS.items()]),
    )
