"""Deployment targets: what runs a rewritten model somewhere other than onnxruntime's CPU
provider with the ai.stamp functions, e.g. an HTP/NPU target (its runtime, units, rule checks and
model preparation: ``htp_runtime``, ``htp_plan``, ``htp_units``, ``htp_rules``, ``htp_model``;
docs/htp.md) and an integer CPU target.

Layer 4, beside the pipeline (docs/design.md, "Layers"): a target may import the foundation,
core, graph, the passes (a target adds its own passes to ``passes/``) and the pipeline; the
evaluation and the CLI may import a target; a target never imports the zoo, the evaluation or
the CLI. A target reads what a rewritten model records through :mod:`stamp_onnx.graph.contract`.
"""
