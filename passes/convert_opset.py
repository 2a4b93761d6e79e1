"""ConvertOpsetPass: raise the default-domain opset to at least ``target`` (never lowers it).

Uses onnxscript's version converter (falling back to onnx's C++ converter for ops it has no
adapter for). A model that cannot be converted fails with the ops named, so the user can
re-export at a newer opset instead.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnxscript.version_converter

from stamp_onnx.errors import ModelLoadError
from stamp_onnx.passes.report import OpsetResult

logger = logging.getLogger(__name__)


class ConvertOpsetPass(ir.passes.InPlacePass):
    def __init__(self, target: int) -> None:
        super().__init__()
        self.target = target

    def call(self, model: ir.Model) -> OpsetResult:
        current = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        if current >= self.target:
            return OpsetResult(model, modified=False, opset_from=current, opset_to=current)
        logger.info("converting opset %d -> %d", current, self.target)
        try:
            onnxscript.version_converter.convert_version(model, self.target, fallback=True)
        except Exception as err:  # the converters raise many kinds of errors
            raise ModelLoadError(
                f"cannot convert the model from opset {current} to {self.target}: {err}; "
                f"re-export it with opset >= {self.target}"
            ) from err
        reached = model.opset_imports.get("", 0)
        if reached < self.target:
            raise ModelLoadError(
                f"opset conversion stopped at {reached} (wanted {self.target}); re-export with opset >= {self.target}"
            )
        return OpsetResult(model, modified=True, opset_from=current, opset_to=reached)
