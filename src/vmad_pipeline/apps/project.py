"""The trained model of a Kedro project, as ``kedro run --pipeline predict`` would load it: its
catalog's checkpoint, this machine's weight paths (``conf/local``), the evaluate parameters'
score rule and the predict parameters' thresholds, device and precision."""

from __future__ import annotations

from pathlib import Path


def load_detector(project: str | Path = ".", env: str | None = None):
    """A :class:`~vmad_pipeline.inference.service.Detector` for the project at ``project``."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from vmad_pipeline.annotation.taxonomy import Taxonomy
    from vmad_pipeline.configs import WeightsConfig, from_dict
    from vmad_pipeline.configs.evaluate import parse_evaluate_params
    from vmad_pipeline.configs.predict import parse_predict_params
    from vmad_pipeline.inference.service import Detector

    root = Path(project).resolve()
    if not (root / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{root} is not a Kedro project (no pyproject.toml); use --project")
    bootstrap_project(root)
    with KedroSession.create(project_path=root, env=env) as session:
        context = session.load_context()
        params, catalog = context.params, context.catalog
        if not catalog.exists("vmad_model"):
            raise FileNotFoundError(
                f"no trained model in {root} (the catalog's vmad_model): run `kedro run` first"
            )
        checkpoint, taxonomy = catalog.load("vmad_model"), catalog.load("taxonomy")
    cfg = parse_predict_params(params["predict"])
    return Detector.from_checkpoint(
        checkpoint,
        from_dict(WeightsConfig, params.get("weights") or {}, "weights"),
        parse_evaluate_params(params["evaluate"]),
        device=cfg.device,
        precision=cfg.precision,
        image_threshold=cfg.image_threshold,
        pixel_threshold=cfg.pixel_threshold,
        taxonomy=Taxonomy.from_dict(taxonomy),
    )


def load_references(
    detector, spec: str, category: str, project: str | Path = ".", env: str | None = None
):
    """``spec`` (a profile's name or a folder / glob of normal images) as the project's
    parameters read it: profiles from ``predict.profiles``, the threshold rule
    ``evaluate.references.model_threshold`` (``inference.profiles.resolve_references``)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from vmad_pipeline.configs.evaluate import parse_evaluate_params
    from vmad_pipeline.configs.predict import parse_predict_params
    from vmad_pipeline.inference.profiles import resolve_references

    root = Path(project).resolve()
    bootstrap_project(root)
    with KedroSession.create(project_path=root, env=env) as session:
        params = session.load_context().params
    cfg, rule = parse_predict_params(params["predict"]), parse_evaluate_params(params["evaluate"])
    return resolve_references(
        detector,
        spec,
        [],
        profiles=str(root / cfg.profiles),
        max_pixels=cfg.max_pixels,
        rule=rule.references.model_threshold,
        seed=rule.shot_seed,
        category=category,
    )
