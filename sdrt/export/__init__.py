"""PyTorch → ONNX export. The only part of sdrt that imports torch and diffusers."""

from .exporter import export

__all__ = ["export"]
