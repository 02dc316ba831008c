import pytest

from vmad_pipeline.configs import ConfigError, ModelConfig, TrainConfig, from_dict, to_dict
from vmad_pipeline.pipelines.train.nodes import parse_train_params


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
