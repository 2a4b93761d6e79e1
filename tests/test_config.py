"""StampConfig: defaults, validation naming the field and the allowed values, JSON round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from stamp_onnx.config import ALLOWED_BITS, StampConfig
from stamp_onnx.errors import ConfigError


def test_defaults_are_the_papers() -> None:
    c = StampConfig()
    assert (c.transform, c.levels, c.hp_tokens, c.hp_bits, c.lp_bits) == ("haar", 3, 64, 8, 4)


@pytest.mark.parametrize("bits", ALLOWED_BITS)
def test_every_allowed_width(bits: int) -> None:
    assert StampConfig(hp_bits=bits, lp_bits=bits).hp_bits == bits


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"transform": "fft"}, "transform='fft' is not allowed; choose one of haar, haar2d, dct, wht, none"),
        ({"hp_bits": 0}, "hp_bits=0 is not allowed"),
        ({"lp_bits": 17}, "lp_bits=17 is not allowed"),
        ({"lp_bits": 4.0}, "lp_bits=4.0 is not allowed"),
        ({"hp_tokens": -1}, "hp_tokens=-1 is not allowed"),
        ({"levels": -1}, "levels=-1 is not allowed"),
        ({"levels": True}, "levels=True is not allowed"),
        ({"include": "[a-"}, "include='[a-' is not a valid regular expression"),
        ({"prefix_tokens": 65}, "prefix_tokens=65 exceeds hp_tokens=64"),
        ({"prefix_tokens": -1}, "prefix_tokens=-1 is not allowed"),
        ({"grid_width": -2, "transform": "haar2d"}, "grid_width=-2 is not allowed"),
        ({"grid_width": 16}, "grid_width=16 only applies to transform haar2d"),
    ],
)
def test_bad_values_name_the_field(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        StampConfig(**changes)  # type: ignore[arg-type]


def test_json_round_trip(tmp_path: Path) -> None:
    c = StampConfig(transform="wht", levels=5, hp_tokens=32, hp_bits=16, lp_bits=2, include="mlp", exclude="lm_head")
    assert StampConfig.from_json(c.to_json()) == c
    path = tmp_path / "c.json"
    path.write_text(c.to_json())
    assert StampConfig.from_file(path) == c


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"bits": 4}', "unknown config key"),
        ('{"hp_bits": 99}', "hp_bits=99"),
    ],
)
def test_bad_config_files_name_the_file(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        StampConfig.from_file(path)
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        StampConfig.from_file(tmp_path / "nope.json")


def test_selection_and_average_bits() -> None:
    c = StampConfig(include="mlp", exclude="down")
    assert c.selects("model.layers.0.mlp.up_proj") is None
    assert "exclude" in (c.selects("model.layers.0.mlp.down_proj") or "")
    assert "include" in (c.selects("model.layers.0.self_attn.q_proj") or "")
    assert StampConfig().average_bits(512) == pytest.approx(4.5)
    assert StampConfig().average_bits(10) == 8.0
