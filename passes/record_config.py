"""RecordConfigPass: store the StampConfig, and the layers left alone with why, in the model's
metadata (:mod:`stamp_onnx.graph.contract` reads them back)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import onnx_ir as ir

from stamp_onnx.config import StampConfig
from stamp_onnx.graph.contract import CONFIG_KEY, SKIPPED_KEY, VERSION_KEY
from stamp_onnx.passes.report import SkippedLayer


class RecordConfigPass(ir.passes.InPlacePass):
    def __init__(self, config: StampConfig, version: str, skipped: Sequence[SkippedLayer] = ()) -> None:
        super().__init__()
        self.config = config
        self.version = version
        self.skipped = list(skipped)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        model.metadata_props[CONFIG_KEY] = self.config.to_json()
        model.metadata_props[VERSION_KEY] = self.version
        if self.skipped:
            model.metadata_props[SKIPPED_KEY] = json.dumps([dataclasses.asdict(item) for item in self.skipped])
        return ir.passes.PassResult(model, modified=True)
