"""Fingerprints (SHA-256) of rewritten tiny models for every transform, feature transform and weight method.

A refactoring must not change what `quantize` writes: run this before and after, and diff::

    python tools/rewrite_fingerprints.py > before.txt
    ...refactor...
    python tools/rewrite_fingerprints.py > after.txt && diff before.txt after.txt

The tiny Llama and ViT are exported afresh (random weights, fixed seeds), rewritten with each
config (calibrated configs on fixed random calibration inputs), and each output file is hashed
with its metadata (the recorded version string is blanked, so a version bump is no change).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from stamp_onnx.config import StampConfig
from stamp_onnx.pipeline import quantize_file

CONFIGS = {
    "haar": StampConfig(),
    "haar_p0_l2": StampConfig(prefix_tokens=0, levels=2, hp_tokens=8),
    "dct": StampConfig(transform="dct", hp_tokens=8),
    "wht": StampConfig(transform="wht", hp_tokens=8, lp_bits=3),
    "none": StampConfig(transform="none", hp_tokens=8),
    "none_a8": StampConfig(transform="none", hp_tokens=0, lp_bits=8),
    "w4_channel": StampConfig(weight_bits=4),
    "w4_block16": StampConfig(weight_bits=4, weight_block=16),
    "w8_hadamard": StampConfig(weight_bits=8, feature_transform="hadamard"),
    "w8_smoothquant": StampConfig(weight_bits=8, feature_transform="smoothquant", smooth_alpha=0.6),
    "w4_gptq": StampConfig(weight_bits=4, weight_method="gptq"),
    "w4_hadamard_gptq": StampConfig(weight_bits=4, weight_method="gptq", feature_transform="hadamard"),
}
VIT_CONFIGS = {"haar2d": StampConfig(transform="haar2d", hp_tokens=8, levels=2)}


def fingerprint(path: Path) -> str:
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "stamp_onnx.version":
            prop.value = ""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:16]


def calibration(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path), load_external_data=False)
    rng = np.random.default_rng(7)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value or 16 for d in value.type.tensor_type.shape.dim]
        dims[0] = 4
        if value.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            feeds[value.name] = rng.integers(0, 32, dims).astype(np.int64)
        else:
            feeds[value.name] = np.cumsum(rng.standard_normal(dims), axis=-1).astype(np.float32) / 4
    return feeds


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    import torch_models

    with tempfile.TemporaryDirectory() as tmp:
        for label, source, configs in (("tiny-llama", torch_models.tiny_llama_onnx(), CONFIGS),
                                       ("tiny-vit", torch_models.tiny_vit_onnx(), {**CONFIGS, **VIT_CONFIGS})):
            feeds = calibration(source)
            print(f"{label} float {fingerprint(source)}")
            for name, config in configs.items():
                out = Path(tmp) / f"{label}-{name}.onnx"
                quantize_file(source, out, config, calibration_feeds=feeds if config.needs_calibration else None)
                print(f"{label} {name} {fingerprint(out)}")


if __name__ == "__main__":
    main()
