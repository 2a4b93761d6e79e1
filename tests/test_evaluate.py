"""Config specs of `stamp-onnx eval`, and the row labels."""

from __future__ import annotations

import pytest

from stamp_onnx.config import StampConfig
from stamp_onnx.errors import ConfigError
from stamp_onnx.evaluation.evaluate import parse_config_spec


def test_specs_parse_to_configs() -> None:
    assert parse_config_spec("haar") == StampConfig()
    assert parse_config_spec("haar,prefix_tokens=1") == StampConfig(prefix_tokens=1)
    assert parse_config_spec("none, hp-tokens=0") == StampConfig(transform="none", hp_tokens=0)
    assert parse_config_spec("dct,exclude=lm_head,lp_bits=3") == StampConfig(transform="dct", exclude="lm_head", lp_bits=3)
    assert parse_config_spec("haar,levels=auto,hp_tokens=5") == StampConfig(levels="auto", hp_tokens=5)
    assert parse_config_spec("haar,levels=4").levels == 4
    spec = "none,weight_bits=4,weight_block=32,feature_transform=hadamard"
    config = StampConfig(transform="none", weight_bits=4, weight_block=32, feature_transform="hadamard")
    assert parse_config_spec(spec) == config
    assert config.label() == "none, K=64, 8/4, hadamard, W4 b32"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fft", "transform='fft'"),
        ("haar,bits=3", "'bits=3' is not key=value"),
        ("haar,levels", "'levels' is not key=value"),
        ("haar,levels=x", r"levels='x' is not allowed; use an integer in \[0, 16\] or 'auto'"),
        ("haar,prefix_tokens=99", "prefix_tokens=99 exceeds hp_tokens=64"),
    ],
)
def test_bad_specs_are_config_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config_spec(spec)


def test_labels() -> None:
    assert StampConfig().label() == "haar L=3, P=1, K=64, 8/4"
    assert StampConfig(prefix_tokens=0).label() == "haar L=3, K=64, 8/4"
    assert StampConfig(transform="wht", prefix_tokens=1, hp_tokens=32).label() == "wht, P=1, K=32, 8/4"
