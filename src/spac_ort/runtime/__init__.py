"""The spac-ort runtime: ONNX Runtime sessions stitched into a MoE decoder.

Imports only onnxruntime, numpy, scipy, networkx and tokenizers (never torch).
"""

from .generate import Generator
from .sampling import SamplingConfig
from .stats import RunReport

__all__ = ["Generator", "RunReport", "SamplingConfig"]
