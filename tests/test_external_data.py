"""Models with external data: read lazily, weights copied file to file, output self-contained.

Also the synthetic LLaMA generator of tools/make_llama.py that the scale benchmark uses.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import models
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import tool_modules

from stamp_onnx.cli.commands import main
from stamp_onnx.config import StampConfig
from stamp_onnx.graph import external_data
from stamp_onnx.pipeline import quantize_file

make_llama = tool_modules.load("make_llama")
SHAPE = make_llama.LlamaShape(hidden=64, intermediate=176, heads=4, vocab=96, layers=2)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _locations(path: Path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


def _run(path: Path, ids: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids})[0]


@pytest.fixture
def llama(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    make_llama.build(folder / "llama.onnx", SHAPE, seed=3)
    return folder / "llama.onnx"


def test_generator_makes_a_valid_causal_llama(llama: Path) -> None:
    onnx.checker.check_model(str(llama), full_check=True)
    model = onnx.load(str(llama), load_external_data=False)
    weights = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert sum(int(np.prod(t.dims)) for t in weights) == SHAPE.params()
    assert [n.op_type for n in model.graph.node].count("MatMul") == SHAPE.layers * (7 + 2) + 1
    ids = np.random.default_rng(0).integers(0, SHAPE.vocab, (2, 12))
    logits = _run(llama, ids)
    assert logits.shape == (2, 12, SHAPE.vocab) and np.isfinite(logits).all()
    changed = ids.copy()
    changed[:, -1] = (changed[:, -1] + 1) % SHAPE.vocab
    later = _run(llama, changed)
    np.testing.assert_array_equal(later[:, :-1], logits[:, :-1])  # causal: no token sees the future
    assert not np.allclose(later[:, -1], logits[:, -1])


@pytest.mark.parametrize("size_gb", [0.3, 1.0, 3.0])
def test_generator_layer_count_reaches_the_size(size_gb: float) -> None:
    shape = make_llama.LlamaShape().with_size(size_gb * 1e9)
    assert abs(4 * shape.params() - size_gb * 1e9) <= 4 * shape.layer_params() / 2  # nearest layer count


def test_external_model_is_rewritten_without_reading_its_weights(
    llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The activation-only rewrite copies weights file to file: no tensor is mapped or read."""

    load = ir.ExternalTensor._load

    def refuse_large(self: ir.ExternalTensor) -> None:
        if self.nbytes > external_data.INLINE_LIMIT:  # small ones are inlined into the .onnx file
            raise AssertionError(f"external tensor {self.name} ({self.nbytes} bytes) was read into memory")
        load(self)

    monkeypatch.setattr(ir.ExternalTensor, "_load", refuse_large)
    out = tmp_path / "q.onnx"
    report = quantize_file(llama, out, StampConfig())
    assert len(report.rewritten) == SHAPE.layers * 7 + 1
    assert out.with_name("q.onnx.data").is_file()


def test_external_output_is_self_contained_and_matches_a_single_file_rewrite(llama: Path, tmp_path: Path) -> None:
    before = _digests(llama.parent)
    out_dir = tmp_path / "elsewhere"
    out_dir.mkdir()
    out = out_dir / "q.onnx"
    assert main(["-q", "quantize", str(llama), "-o", str(out)]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["q.onnx", "q.onnx.data"]
    assert _locations(out) == {"q.onnx.data"}
    assert _digests(llama.parent) == before
    onnx.checker.check_model(str(out), full_check=True)

    single = tmp_path / "single.onnx"
    onnx.save(onnx.load(str(llama)), str(single))  # the same model, weights inside the file
    single_out = tmp_path / "single_q.onnx"
    assert main(["-q", "quantize", str(single), "-o", str(single_out)]) == 0
    assert _locations(single_out) == set()

    ids = np.random.default_rng(1).integers(0, SHAPE.vocab, (2, 16))
    np.testing.assert_array_equal(_run(out, ids), _run(single_out, ids))
    # every weight carried over byte for byte
    rewritten = onnx.load(str(out))
    source = {t.name: t for t in onnx.load(str(llama)).graph.initializer}
    for tensor in rewritten.graph.initializer:
        if tensor.name in source:
            assert onnx.numpy_helper.to_array(tensor).tobytes() == onnx.numpy_helper.to_array(source[tensor.name]).tobytes()


def test_large_tensors_are_aligned_in_the_output(llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    quantize_file(llama, out, StampConfig())
    model = onnx.load(str(out), load_external_data=False)
    for tensor in model.graph.initializer:
        info = {e.key: int(e.value) for e in tensor.external_data if e.key in ("offset", "length")}
        if info.get("length", 0) >= external_data.ALIGN_THRESHOLD:
            assert info["offset"] % external_data.ALIGNMENT == 0, tensor.name


def test_copy_without_kernel_support_gives_the_same_bytes(
    llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = tmp_path / "kernel.onnx"
    quantize_file(llama, kernel, StampConfig())

    def unsupported(*args: object) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    buffered = tmp_path / "buffered.onnx"
    quantize_file(llama, buffered, StampConfig())
    assert kernel.with_name("kernel.onnx.data").read_bytes() == buffered.with_name("buffered.onnx.data").read_bytes()


def test_output_that_would_overwrite_the_input_data_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Input a.onnx keeps its weights in b.onnx.data; writing b.onnx would replace them."""
    path = tmp_path / "a.onnx"
    onnx.save_model(models.mlp_model(), str(path), save_as_external_data=True, location="b.onnx.data", size_threshold=0)
    before = _digests(tmp_path)
    assert main(["-q", "quantize", str(path), "-o", str(tmp_path / "b.onnx")]) == 2  # a usage error
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "would overwrite the input's external data b.onnx.data" in err
    assert _digests(tmp_path) == before


def test_external_output_is_byte_identical_across_runs(llama: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "q.onnx", tmp_path / "b" / "q.onnx"
    for out in (first, second):
        out.parent.mkdir()
        quantize_file(llama, out, StampConfig())
    assert _digests(first.parent) == _digests(second.parent)


def test_single_file_output_over_an_external_one_leaves_no_stale_data(llama: Path, mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    assert main(["-q", "quantize", str(llama), "-o", str(out)]) == 0
    assert out.with_name("q.onnx.data").is_file()
    assert main(["-q", "quantize", str(mlp_path), "-o", str(out)]) == 0  # no external data
    assert not out.with_name("q.onnx.data").exists()
    assert _locations(out) == set()
    onnx.checker.check_model(str(out), full_check=True)


def test_external_output_over_a_single_file_one_is_consistent(llama: Path, mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    assert main(["-q", "quantize", str(mlp_path), "-o", str(out)]) == 0
    assert main(["-q", "quantize", str(llama), "-o", str(out)]) == 0
    assert _locations(out) == {"q.onnx.data"}
    reference = tmp_path / "fresh" / "q.onnx"
    reference.parent.mkdir()
    quantize_file(llama, reference, StampConfig())
    assert _digests(tmp_path) == {**_digests(reference.parent), "mlp.onnx": _digests(tmp_path)["mlp.onnx"]}


def test_data_file_the_old_output_did_not_use_is_left_alone(mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    assert main(["-q", "quantize", str(mlp_path), "-o", str(out)]) == 0
    unrelated = out.with_name("q.onnx.data")
    unrelated.write_bytes(b"not ours")
    assert main(["-q", "quantize", str(mlp_path), "-o", str(out), "--transform", "dct"]) == 0
    assert unrelated.read_bytes() == b"not ours"
