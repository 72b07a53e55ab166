"""spac-ort: Mixture-of-Experts inference with speculative activation on ONNX Runtime."""

__version__ = "0.1.0"
