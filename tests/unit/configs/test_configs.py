import pytest
from helpers import REPO

from vmad_pipeline.configs import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    from_dict,
    parse_train_params,
    to_dict,
)


def test_defaults_round_trip():
    cfg = ModelConfig()
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"train\.model\.vision\.hidden_sise"):
        parse_train_params({"model": {"vision": {"hidden_sise": 3}}})


def test_unknown_preset_is_named():
    with pytest.raises(ConfigError, match=r"train\.model\.preset.*unknown preset 'huge'.*tiny"):
        parse_train_params({"model": {"preset": "huge"}})


def test_unknown_projector_lists_known_names():
    with pytest.raises(
        ConfigError,
        match=r"train\.model\.projector\.name.*'qformer'.*mlp, avgpool, resampler, ldpv2",
    ):
        parse_train_params({"model": {"projector": {"name": "qformer"}}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"train\.steps.*integer"):
        from_dict(TrainConfig, {"steps": "many"}, "train")


def test_range_checks():
    with pytest.raises(ConfigError, match="batch_size"):
        from_dict(TrainConfig, {"batch_size": 0}, "train")


def test_the_shipped_real_preset_is_valid_and_matches_sam_vit_h():

    import yaml

    from vmad_pipeline.models.pretrained import SAM_VIT_H

    folder = REPO / "conf" / "presets" / "llava7b_sam_h"
    params = yaml.safe_load((folder / "parameters_train.yml").read_text())["train"]
    weights = yaml.safe_load((folder / "parameters_weights.yml").read_text())["weights"]
    cfg, model = parse_train_params(params, weights)
    assert model.preset == "llava7b_sam_h" and model.sam == SAM_VIT_H
    assert set(model.frozen) == {"vision", "sam_encoder"}
    assert (model.lora.r, model.lora.alpha, model.lora.target_modules) == (
        8,
        16,
        ("q_proj", "v_proj"),
    )
    assert model.projector.name == "ltc" and model.projector.ltc.levels == (12, 16, 22, 23)
    assert model.vision.select_layer == -2 and cfg.gradient_checkpointing
    assert model.weights.llava_dir and model.weights.sam_checkpoint


def test_the_default_is_the_small_preset_and_tiny_stays_shipped():

    import yaml

    conf = REPO / "conf"
    default = yaml.safe_load((conf / "base" / "parameters_train.yml").read_text())["train"]
    tiny = yaml.safe_load((conf / "presets" / "tiny" / "parameters_train.yml").read_text())["train"]
    _, small_model = parse_train_params(default)
    tiny_cfg, tiny_model = parse_train_params(tiny)
    assert small_model.preset == "small" and small_model.seg_evidence
    assert tiny_model.preset == "tiny" and not tiny_model.seg_evidence
    # the tiny preset as it was the default: LTC on CLIP levels 1 and 2, 900 steps
    assert tiny_model.projector.ltc.levels == (1, 2) and tiny_cfg.steps == 900
    assert set(default) == set(tiny) | {
        "detect_paste_prob",
        "name_swap_prob",
        "evidence_oracle",
        "reference_shots",  # the tiny preset reads no references (model.references off)
        "shared_paste_prob",
    }


def test_a_preset_copied_into_conf_local_replaces_the_default(tmp_path):
    """The README's `cp conf/presets/tiny/parameters_train.yml conf/local/`, through Kedro's own
    config loader: the whole `train` block is the preset's."""
    import shutil

    from kedro.config import OmegaConfigLoader

    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf" / "base", conf / "base")
    (conf / "local").mkdir()
    shutil.copy(REPO / "conf" / "presets" / "tiny" / "parameters_train.yml", conf / "local")
    params = OmegaConfigLoader(str(conf), base_env="base", default_run_env="local")["parameters"]
    cfg, model = parse_train_params(params["train"])
    assert model.preset == "tiny" and cfg.steps == 900 and cfg.detect_paste_prob == 0.0


def test_the_shipped_llm_annotation_preset_is_valid_over_the_defaults():

    import yaml

    from vmad_pipeline.ablation.plan import deep_merge
    from vmad_pipeline.configs.annotate import parse_annotate_params

    conf = REPO / "conf"
    base = yaml.safe_load((conf / "base" / "parameters_annotate.yml").read_text())["annotate"]
    preset = yaml.safe_load(
        (conf / "presets" / "llm_annotation" / "parameters_annotate.yml").read_text()
    )["annotate"]
    # conf/local replaces the whole `annotate` block (Kedro's default merge): the preset alone
    # must be complete, and equal to the preset merged over the shipped defaults.
    cfg = parse_annotate_params(preset)
    assert cfg == parse_annotate_params(deep_merge(base, preset))
    assert cfg.backend == "llm" and cfg.llm.model and cfg.llm.base_url.endswith("/v1")
