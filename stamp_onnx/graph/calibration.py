"""Calibration: statistics of a model's activations on sample data, measured in onnxruntime.

A calibrated rewrite needs, for every activation that feeds a rewritten layer, the largest |x|
of each feature channel over all calibration tokens (``--feature-transform smoothquant``, on
the float model), or H = sum x^T x over the tokens (``--weight-method gptq``, on each layer's
MatMul input in the model rewritten with round-to-nearest weights:
:func:`stamp_onnx.pipeline.calibrate_for`), or the mean energy of each token, E ||x_i||^2
(``--bit-allocation energy``, on each quantizer's input after the sequence transform). Every wanted activation is made a graph output and
the model runs one sample at a time, so memory stays at one sample's activations; any ONNX
file can be calibrated, with or without its PyTorch source.

Calibration data is a ``.npz`` file of arrays named after the model's inputs, one sample per
row of axis 0 (``stamp-onnx export MODEL --calibration-data FILE.npz`` writes one from a built-in
model's own data, held out from the evaluation windows).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

from stamp_onnx.core import quant
from stamp_onnx.errors import ConfigError, first_line
from stamp_onnx.graph import runtime
from stamp_onnx.graph.model_io import load_arrays

logger = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(bool)": np.bool_, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Per activation (value name in the float graph): max |x| per feature channel, shape (d,),
    and (when asked for) H = sum over tokens of x^T x, float64 (d, d), and the mean over
    sequences of each token's energy sum_j x_ij^2, float64 (s,) (tokens on axis -2)."""

    amax: dict[str, np.ndarray]
    samples: int
    tokens: int  # calibration tokens per activation (samples x tokens per sample)
    hessian: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    energy: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def load_feeds(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a calibration ``.npz`` file, by name (ConfigError when it cannot be read)."""
    feeds = load_arrays(path, "calibration file", "write one with numpy.savez or `stamp-onnx export --calibration-data`")
    if not feeds:
        raise ConfigError(f"calibration file {path} holds no arrays; it needs one per model input")
    return feeds


def save_feeds(path: str | Path, feeds: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # np.savez would append .npz to a name without it
        np.savez(f, **feeds)  # type: ignore[arg-type]


def calibrate(
    model_path: str | Path, feeds: dict[str, np.ndarray], activations: Iterable[str], *, hessians: bool = False,
    energies: bool = False,
) -> Calibration:
    """Run the model at ``model_path`` on ``feeds`` (one row at a time); max |x| per channel of
    each activation, its x^T x when ``hessians``, its mean energy per token when ``energies``
    (ConfigError when an activation's token count changes between samples)."""
    names = list(dict.fromkeys(activations))
    proto = onnx.load(str(model_path))  # with its external data: the session is built from bytes
    # native: a rewritten model (GPTQ's Hessians) runs faster
    session = runtime.session_exposing(proto, names, native=True, source=model_path, what="calibration", error=ConfigError)
    feeds = _check_feeds(session, feeds)
    n = len(next(iter(feeds.values())))
    amax: dict[str, np.ndarray] = {}
    hessian: dict[str, np.ndarray] = {}
    energy: dict[str, np.ndarray] = {}
    tokens = 0
    for row in range(n):
        try:
            values = session.run(names, {k: v[row : row + 1] for k, v in feeds.items()})
        except Exception as err:
            raise ConfigError(f"the calibration data does not run through {model_path}: {first_line(err)}") from err
        for name, value in zip(names, values, strict=True):
            flat = np.abs(value.reshape(-1, value.shape[-1]))
            channel = flat.max(axis=0) if len(flat) else np.zeros(value.shape[-1], np.float32)
            amax[name] = channel if name not in amax else np.maximum(amax[name], channel)
            if hessians:
                x = value.reshape(-1, value.shape[-1]).astype(np.float32)
                product = (x.T @ x).astype(np.float64)
                hessian[name] = product if name not in hessian else hessian[name] + product
            if energies:
                _add_energy(energy, name, value)
        tokens += int(np.prod(values[0].shape[:-1])) if values else 0
    logger.info("calibrated %d activations on %d samples (%d tokens each activation)", len(names), n, tokens)
    sequences = {name: n * int(np.prod(value.shape[:-2])) for name, value in zip(names, values, strict=True)} if n else {}
    return Calibration(amax=amax, samples=n, tokens=tokens, hessian=hessian,
                       energy={name: total / max(sequences[name], 1) for name, total in energy.items()})


def _add_energy(energy: dict[str, np.ndarray], name: str, value: np.ndarray) -> None:
    """Add each token's sum_j x_ij^2 of ``value`` (..., s, d), summed over the leading axes, to energy[name]."""
    if value.ndim < 2:
        raise ConfigError(f"activation {name!r} has shape {value.shape}: token energies need tokens on axis -2")
    per_token = quant.token_energy(value)
    if name in energy and energy[name].shape != per_token.shape:
        raise ConfigError(f"activation {name!r} has {per_token.size} tokens in one calibration sample and "
                          f"{energy[name].size} in another; token energies need one sequence length (pad or cut the samples)")
    energy[name] = per_token if name not in energy else energy[name] + per_token


def _check_feeds(session: object, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feeds the session takes, cast to its input types; ConfigError naming what does not fit."""
    inputs = {i.name: i for i in session.get_inputs()}  # type: ignore[attr-defined]
    missing = sorted(set(inputs) - set(feeds))
    unknown = sorted(set(feeds) - set(inputs))
    if missing or unknown:
        raise ConfigError(
            f"the calibration arrays ({', '.join(sorted(feeds))}) do not match the model inputs "
            f"({', '.join(inputs)}): missing {missing or 'none'}, unknown {unknown or 'none'}"
        )
    checked: dict[str, np.ndarray] = {}
    lengths = set()
    for name, info in inputs.items():
        value = feeds[name]
        if value.ndim != len(info.shape):
            raise ConfigError(f"calibration array {name!r} has rank {value.ndim}; the model input has rank {len(info.shape)} "
                              "(one sample per row of axis 0)")
        dtype = _ORT_TYPES.get(info.type)
        if dtype is None or not np.can_cast(value.dtype, dtype, casting="same_kind"):
            raise ConfigError(f"calibration array {name!r} is {value.dtype}; the model input is {info.type}")
        checked[name] = np.ascontiguousarray(value, dtype=dtype)
        lengths.add(len(value))
    if len(lengths) != 1 or 0 in lengths:
        raise ConfigError(f"the calibration arrays need the same positive number of samples (rows), got {sorted(lengths)}")
    return checked
