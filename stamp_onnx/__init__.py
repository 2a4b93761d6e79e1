"""stamp-onnx: STaMP (Sequence Transformation and Mixed Precision) quantization for ONNX models."""

__version__ = "0.1.0"
