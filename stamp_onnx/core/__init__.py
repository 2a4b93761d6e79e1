"""The math of STaMP, in numpy and torch: sequence transforms, the per-token quantizer, weight
quantization (RTN, GPTQ), the feature rotation, SmoothQuant's scales, layer names.

Layer 1 (docs/design.md, "Layers"): imports only the foundation (stamp_onnx.errors,
stamp_onnx.config); no ONNX, no onnxruntime.
"""
