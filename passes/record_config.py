"""RecordConfigPass: store the StampConfig in the model's metadata so inspect/validate can read it."""

from __future__ import annotations

import onnx_ir as ir

from stamp_onnx.config import StampConfig

CONFIG_KEY = "stamp_onnx.config"
VERSION_KEY = "stamp_onnx.version"


class RecordConfigPass(ir.passes.InPlacePass):
    def __init__(self, config: StampConfig, version: str) -> None:
        super().__init__()
        self.config = config
        self.version = version

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        model.metadata_props[CONFIG_KEY] = self.config.to_json()
        model.metadata_props[VERSION_KEY] = self.version
        return ir.passes.PassResult(model, modified=True)


def recorded_config(model: ir.Model) -> StampConfig | None:
    text = model.metadata_props.get(CONFIG_KEY)
    return None if text is None else StampConfig.from_json(text)
