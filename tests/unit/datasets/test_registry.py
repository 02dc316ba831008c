"""The format registry: a source entry's format and reader options are checked, naming the entry."""

from __future__ import annotations

import pytest

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.datasets.registry import source_roots


def test_source_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.sources\[0\]\.format.*'nosuch'.*vision"):
        source_roots([{"name": "a", "format": "nosuch", "root": "/x"}], "/syn")
    with pytest.raises(
        ConfigError, match=r"unknown option\(s\) \['resolution'\].*allowed: categories"
    ):
        source_roots([{"name": "a", "format": "mvtec", "root": "/x", "resolution": 256}], "/syn")
