"""The two TensorRT flavours behind one builder and one runtime backend, and the local GPU.

``tensorrt`` (NVIDIA TensorRT 10+, data-centre and RTX GPUs) and ``tensorrt-rtx`` (TensorRT for RTX: Turing to
Blackwell RTX GPUs, compiles ahead of time for named compute capabilities without a GPU) share their Python API
for everything sdrt uses; what differs is listed on ``Flavour`` and nowhere else.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from ..errors import BackendError, UserInputError

FlavourName = Literal["tensorrt", "tensorrt-rtx"]
FLAVOURS: tuple[FlavourName, ...] = ("tensorrt", "tensorrt-rtx")
_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
_INSTALL = {
    "tensorrt": "pip install 'sdrt[tensorrt]' (NVIDIA TensorRT 10 or newer; its libraries come from "
                "NVIDIA's package index, pypi.nvidia.com)",
    "tensorrt-rtx": "pip install 'sdrt[tensorrt-rtx]' (TensorRT for RTX, from PyPI)",
}


@dataclass(frozen=True)
class Flavour:
    name: FlavourName
    trt: ModuleType  # the imported Python module (tensorrt or tensorrt_rtx)

    @property
    def version(self) -> str:
        return self.trt.__version__

    @property
    def label(self) -> str:
        return f"{'TensorRT-RTX' if self.rtx else 'TensorRT'} {self.version}"

    @property
    def rtx(self) -> bool:
        # TensorRT for RTX: ahead-of-time targets, runtime cache; no timing cache (its calls are no-ops there)
        return self.name == "tensorrt-rtx"

    def compute_capability_enum(self, cc: str):
        """``"8.6"`` -> ``ComputeCapability.SM86`` (TensorRT for RTX only)."""
        member = getattr(self.trt.ComputeCapability, "SM" + cc.replace(".", ""), None)
        if member is None:
            raise UserInputError(f"{self.label} cannot target compute capability {cc}; it targets "
                                 f"{', '.join(supported_targets(self))}")
        return member


def supported_targets(flavour: Flavour) -> list[str]:
    """The compute capabilities a TensorRT-for-RTX build can name, as ``"8.6"``."""
    names = [m for m in dir(flavour.trt.ComputeCapability) if m.startswith("SM") and m[2:].isdigit()]
    return [f"{m[2:-1]}.{m[-1]}" for m in sorted(names, key=lambda m: int(m[2:]))]


def load_flavour(name: str) -> Flavour:
    """Import the flavour's module; a missing package gets the command that installs it."""
    if name not in FLAVOURS:
        raise UserInputError(f"unknown TensorRT flavour {name!r}; choose one of {', '.join(FLAVOURS)}")
    try:
        module = importlib.import_module(_MODULES[name])
    except ImportError as e:
        raise BackendError(f"{name} is not installed ({e}). Install it: {_INSTALL[name]}") from e
    return Flavour(name, module)


def parse_compute_capabilities(text: str | None) -> tuple[str, ...]:
    """``"8.6,8.9"`` -> ``("8.6", "8.9")``, checked for form."""
    if not text:
        return ()
    values = {v.strip() for v in text.split(",") if v.strip()}
    bad = [v for v in values if not _is_cc(v)]
    if bad or not values:
        raise UserInputError(f"compute capability {text!r}: write MAJOR.MINOR, e.g. --compute-capability 8.6,8.9")
    return tuple(sorted(values, key=lambda v: tuple(map(int, v.split(".")))))


def _is_cc(text: str) -> bool:
    major, _, minor = text.partition(".")
    return major.isdigit() and minor.isdigit()


def local_gpu() -> tuple[str, str] | None:
    """(name, compute capability) of GPU 0, or None where there is no usable GPU or no cuda-python."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or not count:
        return None
    err, props = cudart.cudaGetDeviceProperties(0)
    if err != cudart.cudaError_t.cudaSuccess:
        return None
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return name, f"{props.major}.{props.minor}"
