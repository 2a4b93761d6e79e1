"""Graph passes (onnx-ir) that rewrite linear layers with STaMP. One pass per module.

Imports only the leaf layers of stamp_onnx (config, errors, naming, ops); never the pipeline.
"""
