"""The ONNX side below the passes: the ai.stamp ops and their function bodies, the contract of a
rewritten model (its metadata keys and the reader of its layers), model files in and out,
onnxruntime sessions, calibration measured in onnxruntime.

Layer 2 (docs/design.md, "Layers"): imports the foundation and stamp_onnx.core; never the
passes, the pipeline or anything above them. No PyTorch.
"""
