"""``levels="auto"``: the level count, the ops that choose it at run time, and the rewrite that
chooses it where the token count is static.

The ops with ``levels=-1`` are held bit for bit to the numpy reference (which resolves the
levels from the shape with :func:`transforms.auto_levels`) on both backends, for many lengths;
``auto_levels`` itself is held to its definition (the fewest levels whose low band fits), written
here as a search over every level count.
"""

from __future__ import annotations

import math
from pathlib import Path

import backends
import models
import numpy as np
import onnx
import onnx_ir as ir
import oracles
import pytest

from stamp_onnx.config import MAX_LEVELS, StampConfig
from stamp_onnx.core import transforms
from stamp_onnx.errors import ConfigError
from stamp_onnx.evaluation import metrics
from stamp_onnx.evaluation.inspection import summarize
from stamp_onnx.graph import ops, runtime
from stamp_onnx.graph.contract import read_layers
from stamp_onnx.graph.model_io import load_model
from stamp_onnx.pipeline import quantize_file


def _low_band(n: int, levels: int, height: int | None = None) -> int:
    """Tokens of the approximation band after ``levels`` levels, from haar_bands (1-D) or the grid."""
    if height is None:
        return int((transforms.haar_bands(n, levels) == 0).sum())
    width = n // height
    rows, cols = transforms.haar_bands(height, levels), transforms.haar_bands(width, levels)
    return int((rows == 0).sum() * (cols == 0).sum())


@pytest.mark.parametrize("transform", ["haar", "haar2d"])
def test_auto_levels_is_the_fewest_whose_low_band_fits(transform: str) -> None:
    sides = range(1, 20) if transform == "haar2d" else [1]
    for height in sides:
        for n in ([height * height, height * 3] if transform == "haar2d" else range(1, 300)):
            width = n // height
            for low_band in (0, 1, 2, 3, 4, 7, 16, 63):
                grid = 0 if transform == "haar" or width == height else width
                got = transforms.auto_levels(n, low_band, transform, grid)
                fits = [
                    lv for lv in range(MAX_LEVELS + 1)
                    if _low_band(n, lv, height if transform == "haar2d" else None) <= max(low_band, 1)
                ]
                assert got == (fits[0] if fits else MAX_LEVELS), (n, height, low_band)


def test_auto_levels_examples() -> None:
    # DINOv2: CLS + 16 x 16 patches, K=5 (P=1): 1-D a_6 = 4 tokens, 2-D LL = 2 x 2 after 3 levels.
    assert transforms.auto_levels(256, 4, "haar") == 6
    assert transforms.auto_levels(256, 4, "haar2d") == 3
    assert transforms.resolve_levels("auto", 257, 5, 1, "haar") == 6
    # SmolLM2 at 512 tokens, K=64, P=1: 511 tokens, a_3 would hold 64 > 63.
    assert transforms.resolve_levels("auto", 512, 64, 1, "haar") == 4
    assert transforms.resolve_levels(3, 512, 64, 1, "haar") == 3
    assert transforms.auto_levels(40, 63, "haar") == 0  # every token at hp bits already
    assert transforms.auto_levels(1 << 20, 1, "haar") == MAX_LEVELS  # capped
    assert transforms.auto_levels(100, 4, "dct") == 0
    with pytest.raises(ValueError, match="grid"):
        transforms.auto_levels(10, 4, "haar2d")


def test_config_reads_auto_and_rejects_bad_levels() -> None:
    assert StampConfig(levels="auto").levels == "auto"
    assert StampConfig(levels=" Auto ").levels == "auto"
    assert StampConfig(levels="5").levels == 5
    assert StampConfig.from_json('{"levels": "auto"}').label().startswith("haar L=auto")
    for bad in ("three", -1, 17, 2.0, True, None):
        with pytest.raises(ConfigError, match="levels="):
            StampConfig(levels=bad)  # type: ignore[arg-type]


AUTO_SPECS = [
    ops.SequenceTransformSpec(t, ops.AUTO, inverse, prefix, width, low_band)
    for t, width in (("haar", 0), ("haar2d", 0), ("haar2d", 3))
    for inverse in (False, True)
    for prefix in (0, 1, 3)
    for low_band in (0, 4, 10)
]


def _lengths(spec: ops.SequenceTransformSpec) -> list[int]:
    if spec.transform == "haar":
        return [1, 2, 3, 5, 8, 9, 17, 64, 100, 257, 600]
    return [spec.prefix_tokens + h * (spec.grid_width or h) for h in (1, 2, 3, 5, 16)]


@pytest.mark.parametrize("spec", AUTO_SPECS, ids=lambda s: s.overload)
def test_auto_transform_is_bit_exact(spec: ops.SequenceTransformSpec, backend: str) -> None:
    sess = backends.session(spec, backend)
    rng = np.random.default_rng(oracles.stable_seed(spec.overload))
    levels_seen = set()
    for s in _lengths(spec):
        x = (rng.standard_t(3, (2, s, 12)) * 3).astype(np.float32)
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], spec.reference(x))
        levels = spec.levels_for(s)
        fixed = ops.SequenceTransformSpec(spec.transform, levels, spec.inverse, spec.prefix_tokens, spec.grid_width)
        np.testing.assert_array_equal(spec.reference(x), fixed.reference(x))
        levels_seen.add(levels)
    assert len(levels_seen) > 1 or spec.transform == "haar2d"  # the lengths choose different levels


@pytest.mark.parametrize("spec", [s for s in AUTO_SPECS if not s.inverse], ids=lambda s: s.overload)
def test_auto_transform_qdq_is_bit_exact(spec: ops.SequenceTransformSpec, backend: str) -> None:
    fused = ops.TransformQDQSpec(spec, ops.TokenQDQSpec(spec.prefix_tokens + spec.low_band, 8, 4))
    both = backends.session(fused, backend, with_transformed=True)
    rng = np.random.default_rng(oracles.stable_seed(fused.overload))
    for s in _lengths(spec):
        x = (rng.standard_t(3, (2, s, 12)) * 3).astype(np.float32)
        y, t = both.run(None, {"x": x})
        np.testing.assert_array_equal(t, spec.reference(x))
        np.testing.assert_array_equal(y, fused.reference(x))


def test_auto_spec_round_trips_and_is_named() -> None:
    for spec in AUTO_SPECS:
        back = ops.spec_from_node(ir.Node(ops.DOMAIN, ops.op_type(spec), [], spec.attributes(), overload=spec.overload))
        assert back == spec
    assert ops.SequenceTransformSpec("haar", ops.AUTO, False, 1, 0, 63).overload == "haar_auto63_p1"
    with pytest.raises(ValueError, match="low_band"):
        ops.SequenceTransformSpec("haar", ops.AUTO, False, 0, 0, -1)


def _static_mlp(path: Path, tokens: int) -> Path:
    proto = models.mlp_model()
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == "seq":
                dim.dim_value = tokens
    return models.save(proto, path)


def _transform_levels(path: Path) -> set[tuple[int, int]]:
    return {(layer.transform.levels, layer.transform.low_band) for layer in read_layers(load_model(path))
            if layer.transform is not None}


def test_rewrite_resolves_a_static_length_and_defers_a_dynamic_one(tmp_path: Path) -> None:
    """Static 37 tokens: the count written into the node; dynamic: -1 and the ops choose.
    Both give the same outputs bit for bit at 37 tokens, and at every length the dynamic model
    equals a model rewritten with the levels auto_levels chose for that length."""
    config = StampConfig(levels="auto", hp_tokens=5, prefix_tokens=1)
    static = tmp_path / "static.onnx"
    quantize_file(_static_mlp(tmp_path / "mlp37.onnx", 37), static, config)
    assert _transform_levels(static) == {(4, 0)}  # ceil(36 / 16) = 3 <= 4 < ceil(36 / 8)
    dynamic = tmp_path / "dynamic.onnx"
    quantize_file(models.save(models.mlp_model(), tmp_path / "mlp.onnx"), dynamic, config)
    assert _transform_levels(dynamic) == {(ops.AUTO, 4)}
    rng = np.random.default_rng(3)
    for native in (False, True) if runtime.native_library() else (False,):
        x = rng.standard_normal((2, 37, models.D_IN)).astype(np.float32)
        got = runtime.session(str(dynamic), native=native).run(["y"], {"x": x})[0]
        np.testing.assert_array_equal(got, runtime.session(str(static), native=native).run(["y"], {"x": x})[0])
        for s in (2, 9, 64, 129):
            levels = transforms.resolve_levels("auto", s, 5, 1, "haar")
            fixed = tmp_path / f"fixed{s}.onnx"
            quantize_file(tmp_path / "mlp.onnx", fixed, config.replace(levels=levels))
            x = rng.standard_normal((2, s, models.D_IN)).astype(np.float32)
            np.testing.assert_array_equal(runtime.session(str(dynamic), native=native).run(["y"], {"x": x})[0],
                                          runtime.session(str(fixed), native=native).run(["y"], {"x": x})[0])


def test_inspect_shows_the_levels_at_the_length(tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    quantize_file(models.save(models.mlp_model(), tmp_path / "mlp.onnx"), out, StampConfig(levels="auto", hp_tokens=5))
    summary = summarize(load_model(out), seq_len=257)
    assert {layer.levels for layer in summary.layers} == {"auto"}
    assert {layer.levels_at_seq_len for layer in summary.layers} == {6}
    assert " auto 6 " in summary.to_text()


def test_leak_free_positions_follow_the_resolved_levels() -> None:
    config = StampConfig(levels="auto", hp_tokens=5, prefix_tokens=1)
    levels = transforms.resolve_levels("auto", 65, 5, 1, "haar")
    assert levels == 4
    np.testing.assert_array_equal(metrics.leak_free_mask(65, config), metrics.leak_free_mask(65, config.replace(levels=levels)))
    assert math.isclose(config.average_bits(65), StampConfig(hp_tokens=5).average_bits(65))


def test_reference_and_layer_check_follow_auto_levels(tmp_path: Path, backend: str) -> None:
    """The PyTorch reference and the per-layer check resolve the levels per length as the ops do:
    every quantized code of every layer equal, at two lengths that choose different levels."""
    from torch_models import tiny_llama, tiny_llama_onnx

    from stamp_onnx.evaluation.layer_check import per_layer_diffs
    from stamp_onnx.zoo.models import sample_inputs

    config = StampConfig(levels="auto", hp_tokens=4)
    out = tmp_path / "q.onnx"
    quantize_file(tiny_llama_onnx(), out, config)
    assert _transform_levels(out) == {(ops.AUTO, 3)}
    assert transforms.resolve_levels("auto", 13, 4, 1, "haar") != transforms.resolve_levels("auto", 40, 4, 1, "haar")
    for seq in (13, 40):
        diffs = per_layer_diffs(out, tiny_llama().module, config, sample_inputs(tiny_llama(), 2, seq, seed=seq),
                                native=backend == backends.NATIVE)
        assert diffs and all(d.qdq_mismatches == 0 for d in diffs)
        assert max(d.transform_rel for d in diffs) < 1e-5
        assert max(d.output_rel for d in diffs) < 1e-4


def test_cli_levels_auto_inline_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`quantize --levels auto` (functions and --inline: the same outputs bit for bit), `inspect` names it."""
    import onnxruntime as ort

    from stamp_onnx.cli.commands import main

    source = models.save(models.mlp_model(), tmp_path / "mlp.onnx")
    functions, inlined = tmp_path / "f.onnx", tmp_path / "i.onnx"
    flags = ["--levels", "auto", "--hp-tokens", "5"]
    assert main(["-q", "quantize", str(source), "-o", str(functions), *flags]) == 0
    assert main(["-q", "quantize", str(source), "-o", str(inlined), "--inline", *flags]) == 0
    assert not any(node.domain == ops.DOMAIN for node in onnx.load(str(inlined)).graph.node)
    x = np.random.default_rng(5).standard_normal((2, 70, models.D_IN)).astype(np.float32)
    got = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0] for p in (functions, inlined)]
    np.testing.assert_array_equal(got[0], got[1])
    capsys.readouterr()
    assert main(["inspect", str(functions), "--seq-len", "70"]) == 0
    text = capsys.readouterr().out
    assert "haar L=auto" in text and " auto 5 " in text  # 69 tokens: ceil(69 / 32) = 3 <= 4 < ceil(69 / 16)


@pytest.mark.parametrize("tokens", [40, 9])
def test_integer_target_takes_auto_levels(tmp_path: Path, backend: str, tokens: int) -> None:
    """--target integer with levels chosen at run time: TransformQuantize (body and kernel) picks the
    same levels as TransformQDQ, so the integer model equals its fake-quant twin to float rounding."""
    source = models.save(models.mlp_model(), tmp_path / "mlp.onnx")
    config = StampConfig(levels="auto", hp_tokens=8, hp_bits=8, lp_bits=8, weight_bits=8)
    x = np.random.default_rng(tokens).standard_normal((2, tokens, models.D_IN)).astype(np.float32)
    outs = []
    for target in ("onnx", "integer"):
        quantize_file(source, tmp_path / f"{target}.onnx", config, target=target)
        session = runtime.session(tmp_path / f"{target}.onnx", backend == "native")
        outs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    assert np.abs(outs[1] - outs[0]).max() <= 1e-5 * np.abs(outs[0]).max(), np.abs(outs[1] - outs[0]).max()
