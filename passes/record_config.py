"""RecordConfigPass: store the StampConfig, and the layers left alone with why, in the model's
metadata so inspect/validate can read them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from stamp_onnx.config import StampConfig
from stamp_onnx.passes.report import SkippedLayer

CONFIG_KEY = "stamp_onnx.config"
VERSION_KEY = "stamp_onnx.version"
SKIPPED_KEY = "stamp_onnx.skipped"  # JSON list of {name, node, reason, linear}


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


def recorded_skips(model: ir.Model) -> list[dict[str, Any]]:
    text = model.metadata_props.get(SKIPPED_KEY)
    return [] if text is None else list(json.loads(text))


def recorded_config(model: ir.Model) -> StampConfig | None:
    text = model.metadata_props.get(CONFIG_KEY)
    return None if text is None else StampConfig.from_json(text)
