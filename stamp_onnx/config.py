"""The quantization configuration: one frozen, validated dataclass that round-trips to JSON.

Example::

    StampConfig()                                # haar, 3 levels, 64 tokens at 8 bits, rest 4
    StampConfig(transform="none", hp_tokens=64)  # the per-token baseline, same bit budget
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from pathlib import Path
from typing import Any

from stamp_onnx.errors import ConfigError


class Transform(enum.StrEnum):
    """The sequence transforms (along the tokens)."""

    HAAR = "haar"
    HAAR2D = "haar2d"
    DCT = "dct"
    WHT = "wht"
    NONE = "none"


class FeatureTransform(enum.StrEnum):
    """The transforms along the features, folded into the weights."""

    NONE = "none"
    HADAMARD = "hadamard"
    SMOOTHQUANT = "smoothquant"


class BitAllocation(enum.StrEnum):
    """How the transformed tokens get their bit widths."""

    TIERS = "tiers"  # two tiers: hp_tokens at hp_bits, the rest at lp_bits
    ENERGY = "energy"  # per-layer widths from the calibrated energy of each transformed token


class WeightMethod(enum.StrEnum):
    """How weight codes are chosen."""

    RTN = "rtn"
    GPTQ = "gptq"


TRANSFORMS = tuple(Transform)
HAAR_TRANSFORMS = (Transform.HAAR, Transform.HAAR2D)  # the transforms with levels
AUTO_LEVELS = "auto"  # levels: the fewest whose low (LL) band fits in the hp tokens after the prefix
MAX_LEVELS = 16
ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
WEIGHT_BITS = (0, 2, 3, 4, 5, 6, 7, 8)  # 0: weights stay float
FEATURE_TRANSFORMS = tuple(FeatureTransform)
CALIBRATED_FEATURE_TRANSFORMS = (FeatureTransform.SMOOTHQUANT,)  # need calibration data
WEIGHT_METHODS = tuple(WeightMethod)
BIT_ALLOCATIONS = tuple(BitAllocation)


@dataclasses.dataclass(frozen=True)
class StampConfig:
    """How each selected linear layer's activation is transformed and quantized.

    transform: sequence transform along the token axis (``none`` keeps token order).
    levels: Haar DWT levels, 1-D or 2-D (ignored by the other transforms), or ``"auto"``: per
        sequence length, the fewest levels whose low band (1-D) or LL band (2-D) holds at most
        ``hp_tokens - prefix_tokens`` tokens, so that the whole approximation band is quantized
        at hp_bits (:func:`stamp_onnx.core.transforms.auto_levels`). Resolved when the rewrite
        knows the token count, else by the ops at run time.
    prefix_tokens: the first tokens kept out of the transform, in front and at hp_bits (an
        LLM's attention sink, a ViT's CLS token); they count toward ``hp_tokens``. Default 1:
        measured better on every model here (docs/results.md); 0 is the paper's plain method.
        With transform ``none`` there is nothing to keep out: it is set to 0.
    grid_width: haar2d only: the width of the token grid formed by the tokens after the
        prefix (0: a square grid, e.g. a ViT's 16 x 16 patches at 224 px).
    hp_tokens: the first ``hp_tokens`` transformed tokens are quantized with ``hp_bits``,
        the rest with ``lp_bits``.
    bit_allocation: ``tiers`` (the two tiers above) or ``energy``: each layer's transformed
        tokens get widths from 2 to ``hp_bits`` bits, chosen from their energy on calibration
        data so that the layer averages ``avg_bits`` bits at the calibration length
        (:mod:`stamp_onnx.core.allocation`); the prefix tokens keep ``hp_bits``. hp_tokens and
        lp_bits are then not used (hp_tokens still sets ``levels="auto"``'s low band).
    include / exclude: regular expressions searched in layer names; a layer is rewritten
        when it matches ``include`` (if given) and does not match ``exclude`` (if given).
    weight_bits: round-to-nearest symmetric weight quantization of the rewritten layers
        (0: float weights); weight_block: per output channel (0) or per block of that many
        input features. See :mod:`stamp_onnx.core.weights`.
    weight_method: ``rtn`` (round to nearest) or ``gptq`` (:mod:`stamp_onnx.core.gptq`, needs
        calibration data: the codes minimize each layer's output error on it).
    feature_transform: ``hadamard`` rotates each rewritten layer's activation along the
        features, X -> X R, with R^T folded into the weight (before weight quantization).
    token_axis: the axis of every layer's activation that holds the tokens of one sequence
        (None: inferred per layer from the shapes, :mod:`stamp_onnx.passes.token_axis`; -1 is
        the feature axis and not allowed). token_axes: per-layer overrides, an ordered list of
        (regex, axis): the first regex found in a layer's name or node name gives its axis.
    """

    transform: str = "haar"
    levels: int | str = 3
    prefix_tokens: int = 1
    grid_width: int = 0
    hp_tokens: int = 64
    hp_bits: int = 8
    lp_bits: int = 4
    bit_allocation: str = "tiers"
    avg_bits: float = 0.0
    include: str | None = None
    exclude: str | None = None
    weight_bits: int = 0
    weight_block: int = 0
    weight_method: str = "rtn"
    feature_transform: str = "none"
    smooth_alpha: float = 0.5
    token_axis: int | None = None
    token_axes: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ConfigError(
                f"transform={self.transform!r} is not allowed; choose one of {', '.join(TRANSFORMS)}"
            )
        object.__setattr__(self, "levels", _levels(self.levels))
        _check_int("hp_tokens", self.hp_tokens, low=0, high=1 << 30)
        _check_int("prefix_tokens", self.prefix_tokens, low=0, high=1 << 30)
        if self.transform == "none":
            object.__setattr__(self, "prefix_tokens", 0)
        _check_int("grid_width", self.grid_width, low=0, high=1 << 20)
        if self.grid_width and self.transform != "haar2d":
            raise ConfigError(f"grid_width={self.grid_width} only applies to transform haar2d, not {self.transform!r}")
        if self.prefix_tokens > self.hp_tokens:
            raise ConfigError(
                f"prefix_tokens={self.prefix_tokens} exceeds hp_tokens={self.hp_tokens}: the kept tokens "
                "are quantized at hp_bits and count toward hp_tokens; raise hp_tokens or lower prefix_tokens"
            )
        for name in ("hp_bits", "lp_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value not in ALLOWED_BITS:
                raise ConfigError(
                    f"{name}={value!r} is not allowed; choose one of "
                    f"{', '.join(map(str, ALLOWED_BITS))}"
                )
        self._check_allocation()
        if self.weight_bits not in WEIGHT_BITS or isinstance(self.weight_bits, bool):
            raise ConfigError(
                f"weight_bits={self.weight_bits!r} is not allowed; choose one of {', '.join(map(str, WEIGHT_BITS))} "
                "(0: float weights)"
            )
        _check_int("weight_block", self.weight_block, low=0, high=1 << 20)
        if self.weight_block and not self.weight_bits:
            raise ConfigError(f"weight_block={self.weight_block} needs weight_bits (weights are float)")
        if self.weight_method not in WEIGHT_METHODS:
            raise ConfigError(f"weight_method={self.weight_method!r} is not allowed; choose one of {', '.join(WEIGHT_METHODS)}")
        if self.weight_method != "rtn" and not self.weight_bits:
            raise ConfigError(f"weight_method={self.weight_method} needs weight_bits (weights are float)")
        if self.feature_transform not in FEATURE_TRANSFORMS:
            raise ConfigError(
                f"feature_transform={self.feature_transform!r} is not allowed; choose one of {', '.join(FEATURE_TRANSFORMS)}"
            )
        alpha = self.smooth_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ConfigError(f"smooth_alpha={alpha!r} is not allowed; use a number in [0, 1]")
        object.__setattr__(self, "smooth_alpha", float(alpha))
        if self.smooth_alpha != 0.5 and self.feature_transform != "smoothquant":
            raise ConfigError(
                f"smooth_alpha={self.smooth_alpha} only applies to feature_transform smoothquant, not {self.feature_transform!r}"
            )
        if self.token_axis is not None:
            _check_token_axis("token_axis", self.token_axis)
        if not isinstance(self.token_axes, (list, tuple)):
            raise ConfigError(f"token_axes={self.token_axes!r} must be a list of [regex, axis] pairs")
        pairs = []
        for item in self.token_axes:
            if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str):
                raise ConfigError(f"token_axes entry {item!r} must be a [regex, axis] pair, e.g. [\"head\", 0]")
            _check_regex("token_axes", item[0])
            _check_token_axis(f"token_axes[{item[0]!r}]", item[1])
            pairs.append((item[0], item[1]))
        object.__setattr__(self, "token_axes", tuple(pairs))
        for name in ("include", "exclude"):
            pattern = getattr(self, name)
            if pattern is not None:
                _check_regex(name, pattern)

    def _check_allocation(self) -> None:
        if self.bit_allocation not in BIT_ALLOCATIONS:
            raise ConfigError(f"bit_allocation={self.bit_allocation!r} is not allowed; choose one of {', '.join(BIT_ALLOCATIONS)}")
        avg = self.avg_bits
        if isinstance(avg, bool) or not isinstance(avg, (int, float)):
            raise ConfigError(f"avg_bits={avg!r} is not allowed; use a number of bits")
        object.__setattr__(self, "avg_bits", float(avg))
        if self.bit_allocation == BitAllocation.TIERS:
            if self.avg_bits:
                raise ConfigError(f"avg_bits={self.avg_bits:g} only applies to bit_allocation energy "
                                  "(two tiers take their budget from hp_tokens, hp_bits and lp_bits)")
            return
        low = min(ALLOWED_BITS)
        if not low <= self.avg_bits <= self.hp_bits:
            raise ConfigError(f"avg_bits={self.avg_bits:g} is not allowed with bit_allocation energy; use a number in "
                              f"[{low}, {self.hp_bits}] (the widths run from {low} to hp_bits)")

    def selects(self, *names: str) -> str | None:
        """Return None if a layer known by ``names`` (layer name, node name) is selected, else why not.

        ``include`` must match one of the names; ``exclude`` must match none of them.
        """
        if self.include is not None and not any(re.search(self.include, n) for n in names):
            return f"does not match include {self.include!r}"
        if self.exclude is not None and any(re.search(self.exclude, n) for n in names):
            return f"matches exclude {self.exclude!r}"
        return None

    def token_axis_for(self, *names: str) -> int | None:
        """The token axis the user gave for a layer known by ``names`` (None: infer it)."""
        for pattern, axis in self.token_axes:
            if any(re.search(pattern, n) for n in names):
                return axis
        return self.token_axis

    def average_bits(self, tokens: int) -> float:
        """Average activation bits over ``tokens`` tokens: (k*hp + (s-k)*lp) / s; with energy
        allocation, its budget ``avg_bits`` (each layer's, at the calibration length)."""
        if tokens <= 0:
            raise ConfigError(f"tokens={tokens} must be positive")
        if self.bit_allocation == BitAllocation.ENERGY:
            return self.avg_bits
        return average_bits(self.hp_tokens, self.hp_bits, self.lp_bits, tokens)

    def label(self) -> str:
        """The config in one line, the same everywhere (eval rows and plots, quantize, validate,
        inspect): 'haar L=3, P=1, K=64, 8/4'; settings at their defaults are left out."""
        parts = [self.transform + (f" L={self.levels}" if self.transform in HAAR_TRANSFORMS else "")]
        if self.grid_width:
            parts.append(f"W={self.grid_width}")
        if self.prefix_tokens:
            parts.append(f"P={self.prefix_tokens}")
        if self.bit_allocation == BitAllocation.ENERGY:
            parts.append(f"energy {self.avg_bits:g} bits, <= {self.hp_bits}")
        else:
            parts += [f"K={self.hp_tokens}", f"{self.hp_bits}/{self.lp_bits}"]
        if self.feature_transform == FeatureTransform.SMOOTHQUANT:
            parts.append(f"smoothquant a={self.smooth_alpha:g}")
        elif self.feature_transform != FeatureTransform.NONE:
            parts.append(self.feature_transform)
        if self.weight_bits:
            parts.append(f"W{self.weight_bits}" + (f" b{self.weight_block}" if self.weight_block else "")
                         + (f" {self.weight_method}" if self.weight_method != WeightMethod.RTN else ""))
        parts += [f"{name} {value!r}" for name, value in (("include", self.include), ("exclude", self.exclude)) if value is not None]
        if self.token_axis is not None:
            parts.append(f"token axis {self.token_axis}")
        parts += [f"token axis {axis} for {pattern!r}" for pattern, axis in self.token_axes]
        return ", ".join(parts)

    @property
    def needs_calibration(self) -> bool:
        """True when the rewrite needs statistics of the float model on calibration data."""
        return (self.feature_transform in CALIBRATED_FEATURE_TRANSFORMS or self.weight_method == "gptq"
                or self.bit_allocation == BitAllocation.ENERGY)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StampConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join(unknown)}; allowed keys: {', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> StampConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"config is not valid JSON: {err}") from err
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> StampConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
        try:
            return cls.from_json(text)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    @classmethod
    def text_fields(cls) -> dict[str, type]:
        """The fields a flag or a ``key=value`` spec can set, with the type their text is read as
        (every field but token_axes, which only a JSON config holds)."""
        kinds: dict[str, type] = {}
        for field in dataclasses.fields(cls):
            kind = "str" if field.name == "levels" else str(field.type).split(" |")[0]  # an integer or "auto"
            if kind in _TEXT_KINDS:
                kinds[field.name] = _TEXT_KINDS[kind]
        return kinds

    def replace(self, **changes: Any) -> StampConfig:
        return dataclasses.replace(self, **changes)


_TEXT_KINDS: dict[str, type] = {"str": str, "int": int, "float": float}


Tiers = tuple[tuple[int, int], ...]  # (token count, bits) of each middle tier, in token order


def average_bits(hp_tokens: int, hp_bits: int, lp_bits: int, tokens: int, mid: Tiers = ()) -> float:
    """The mean bits per activation value over ``tokens`` tokens, (k*hp + (s-k)*lp) / s with two
    tiers (k = min(hp_tokens, s)); ``mid`` as :func:`tier_spans` takes it."""
    return sum((end - start) * bits for start, end, bits in tier_spans(tokens, hp_tokens, hp_bits, lp_bits, mid)) / tokens


def tier_spans(tokens: int, hp_tokens: int, hp_bits: int, lp_bits: int, mid: Tiers = ()) -> list[tuple[int, int, int]]:
    """(start, end, bits) of each tier of a quantizer over ``tokens`` transformed tokens: the first
    hp_tokens at hp_bits, then each middle tier's count at its bits, the rest at lp_bits; a tier
    past the end is cut short or empty (kept, so tier i is always entry i)."""
    spans, start = [], 0
    for count, bits in ((hp_tokens, hp_bits), *mid):
        end = min(start + count, tokens)
        spans.append((start, end, bits))
        start = end
    spans.append((start, tokens, lp_bits))
    return spans


def _levels(value: object) -> int | str:
    """levels as given (an int, "auto") or as text ("3" from a flag or a spec) -> an int or "auto"."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO_LEVELS:
            return AUTO_LEVELS
        value = int(text) if text.lstrip("+-").isdigit() else text
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LEVELS:
        raise ConfigError(f"levels={value!r} is not allowed; use an integer in [0, {MAX_LEVELS}] or 'auto'")
    return value


def _check_int(name: str, value: object, *, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name}={value!r} is not allowed; use an integer in [{low}, {high}]")


def _check_token_axis(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not -16 <= value < 16 or value == -1:
        raise ConfigError(f"{name}={value!r} is not allowed; use an axis in [-16, 15] other than -1 (the features)")


def _check_regex(name: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{name}={pattern!r} is not a valid regular expression: {err}") from err
