"""sdrt: an optimized inference runtime for Stable Diffusion.

Importing sdrt is cheap and never imports torch: ``Pipeline`` loads the runtime, ``export`` the
exporter (torch, diffusers) and ``build`` the TensorRT engine builder only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Pipeline", "GenerationResult", "export", "build", "__version__"]

if TYPE_CHECKING:
    from .engines import build
    from .export import export
    from .runtime import GenerationResult, Pipeline


def __getattr__(name: str) -> Any:
    if name in ("Pipeline", "GenerationResult"):
        from . import runtime

        return getattr(runtime, name)
    if name == "build":
        from .engines import build

        return build
    if name == "export":
        from .export import export

        return export
    raise AttributeError(f"module 'sdrt' has no attribute {name!r}")
