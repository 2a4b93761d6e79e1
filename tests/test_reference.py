"""The PyTorch STaMP reference: what it hooks, what it computes, and that it cleans up.

What a hooked layer computes is checked against a Haar and a quantizer written here and in
tests/oracles.py, sharing no code with stamp_onnx.core.transforms or stamp_onnx.core.quant; the other
tests check the wiring (which layers, hooks removed, weights restored) or compare with the
float model.
"""

from __future__ import annotations

import math

import numpy as np
import oracles
import pytest
import torch
from torch_models import tiny_llama

from stamp_onnx.config import StampConfig
from stamp_onnx.core import quant
from stamp_onnx.errors import ValidationError
from stamp_onnx.evaluation.reference import stamp_activation, stamp_reference
from stamp_onnx.zoo.models import sample_inputs


class TwoHeads(torch.nn.Module):
    """Two linear layers reading the same input: quantizing one must not touch the other."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(32, 16)
        self.b = torch.nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x), self.b(x)


def correlated_tokens(seed: int, shape: tuple[int, ...] = (2, 40, 32)) -> torch.Tensor:
    """Random walk along the tokens: neighbouring tokens look alike, as in real activations."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cumsum(torch.randn(shape, generator=gen), dim=-2)


def logits(ids: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return tiny_llama().module(input_ids=torch.from_numpy(ids)).logits


def test_only_selected_layers_change() -> None:
    torch.manual_seed(0)
    model = TwoHeads().eval()
    x = correlated_tokens(1)
    with torch.no_grad():
        a0, b0 = model(x)
        with stamp_reference(model, StampConfig(hp_tokens=4, include=r"^a$")) as names:
            a1, b1 = model(x)
    assert names == ["a"]
    assert torch.equal(b0, b1)
    assert not torch.allclose(a0, a1)


def plain_haar(x: np.ndarray, levels: int) -> np.ndarray:
    """The 1-D multi-level Haar of docs/design.md on axis -2, written out: pairs (2i, 2i+1) of the low
    band -> ((a + b) / sqrt 2, (a - b) / sqrt 2), an odd last token carried into the low band."""
    k = x.dtype.type(1 / math.sqrt(2))
    low, details = x, []
    for _ in range(levels):
        n = low.shape[-2]
        if n < 2:
            break
        even, odd = low[..., 0 : n - 1 : 2, :], low[..., 1:n:2, :]
        details.insert(0, (even - odd) * k)
        low = np.concatenate([(even + odd) * k, low[..., 2 * (n // 2) :, :]], axis=-2)
    return np.concatenate([low, *details], axis=-2)


def test_plain_haar_is_orthonormal() -> None:
    m = plain_haar(np.eye(40), 3)
    np.testing.assert_allclose(m @ m.T, np.eye(40), atol=1e-12)


def test_hooked_layer_computes_inverse_of_quantized_product() -> None:
    """y = L^-1(Q(L x) W^T) + b, the bias after the inverse; L and Q written independently here.

    L x in float32 (the same butterflies, so Q sees the same values bit for bit), Q by the
    literal quantizer, the rest in float64 with L^-1 = L^T from the float64 matrix.
    """
    torch.manual_seed(0)
    model = TwoHeads().eval()
    config = StampConfig(transform="haar", levels=3, hp_tokens=8, prefix_tokens=0)
    x = correlated_tokens(2)
    with torch.no_grad(), stamp_reference(model, config):
        y = model(x)[0].double().numpy()
    q = oracles.literal_token_qdq(plain_haar(x.numpy(), 3), 8, 8, 4).astype(np.float64)
    w, b = model.a.weight.detach().double().numpy(), model.a.bias.detach().double().numpy()
    expected = plain_haar(np.eye(x.shape[-2]), 3).T @ (q @ w.T) + b
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_tiny_llama_hooks_every_linear_by_default_and_honours_exclude() -> None:
    module = tiny_llama().module
    linears = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    with stamp_reference(module, StampConfig()) as names:
        assert names == linears and "lm_head" in names
    with stamp_reference(module, StampConfig(exclude="mlp|lm_head")) as names:
        assert names and not any("mlp" in n or n == "lm_head" for n in names)


@pytest.mark.parametrize("transform", ["haar", "dct", "wht", "none"])
def test_sixteen_bits_match_float(transform: str) -> None:
    ids = sample_inputs(tiny_llama(), 2, 48, seed=3)["input_ids"]
    ref = logits(ids)
    with stamp_reference(tiny_llama().module, StampConfig(transform=transform, hp_bits=16, lp_bits=16)):
        got = logits(ids)
    assert quant.sqnr_db(ref.numpy(), got.numpy()) > 70
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-3 * float(ref.abs().max()))


def test_all_tokens_high_precision_is_nearly_exact_and_low_precision_is_not() -> None:
    ids = sample_inputs(tiny_llama(), 2, 40, seed=4)["input_ids"]
    ref = logits(ids).numpy()
    with stamp_reference(tiny_llama().module, StampConfig(hp_tokens=40, hp_bits=16, lp_bits=2)):
        all_hp = logits(ids).numpy()
    with stamp_reference(tiny_llama().module, StampConfig(hp_tokens=0, prefix_tokens=0, hp_bits=16, lp_bits=2)):
        all_lp = logits(ids).numpy()
    assert quant.sqnr_db(ref, all_hp) > 70
    assert quant.sqnr_db(ref, all_lp) < 30


def test_hooks_are_removed_on_exit_and_on_error() -> None:
    module = tiny_llama().module
    ids = sample_inputs(tiny_llama(), 1, 24, seed=5)["input_ids"]
    ref = logits(ids)
    with stamp_reference(module, StampConfig(hp_tokens=2, lp_bits=2)):
        assert not torch.equal(logits(ids), ref)
    with pytest.raises(RuntimeError, match="boom"), stamp_reference(module, StampConfig()):
        raise RuntimeError("boom")
    assert all(not m._forward_pre_hooks for m in module.modules())
    assert torch.equal(logits(ids), ref)


def test_explicit_layers_must_exist() -> None:
    with pytest.raises(ValidationError, match=r"not nn\.Linear"), stamp_reference(
        tiny_llama().module, StampConfig(), layers=["model.layers.0.mlp.down_proj", "no.such.layer"]
    ):
        pass
    with stamp_reference(tiny_llama().module, StampConfig(), layers=["lm_head"]) as names:
        assert names == ["lm_head"]


def test_stamp_activation_keeps_shape_and_dtype() -> None:
    x = correlated_tokens(6, (3, 2, 17, 32))
    y = stamp_activation(x, StampConfig(hp_tokens=4))
    assert y.shape == x.shape and y.dtype == torch.float32
    assert quant.sqnr_db(x.numpy(), y.numpy()) > 15
