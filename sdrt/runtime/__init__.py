"""The lean runtime: numpy + a backend (ONNX Runtime, …). Never imports torch."""

from .pipeline import GenerationResult, Pipeline

__all__ = ["Pipeline", "GenerationResult"]
