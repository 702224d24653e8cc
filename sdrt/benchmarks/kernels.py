"""Which kernels OpenVINO's CPU plugin chose for a compiled graph's matrix products.

A CPU flag says what the machine could do; the kernel names say what a graph really runs on: `brgemm_avx512_bf16`
(AVX512-BF16), `brgemm_avx512_amx_bf16` (AMX tiles), `brgemm_avx512_I8` (VNNI int8), `gemm_mlas_f32` … So the
bench can show, per backend and for the GEMM peak, that bf16 and int8 run where asked and AMX is used where present.
"""

from __future__ import annotations

from collections import Counter

# the layers that hold (almost) all of a diffusion model's arithmetic, as OpenVINO's runtime graph names them
MATRIX_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul",
                 "ScaledDotProductAttention")


def kernel_mix(compiled) -> dict[str, int]:
    """The matrix-product nodes of ``compiled`` (an OpenVINO CompiledModel) counted by kernel name, most first."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in MATRIX_LAYERS:
            counts[info["primitiveType"].astype(str)] += 1
    return dict(counts.most_common())


def amx_share(mix: dict[str, int]) -> float:
    """The fraction of the matrix-product nodes that run on AMX tiles."""
    total = sum(mix.values())
    return sum(n for kernel, n in mix.items() if "amx" in kernel.lower()) / total if total else 0.0


def describe_mix(mix: dict[str, int]) -> str:
    """``"brgconv_avx512_bf16 ×52, brgemm_avx512_bf16 ×31 (AMX 0 %)"``."""
    if not mix:
        return "—"
    return ", ".join(f"{kernel} ×{n}" for kernel, n in mix.items()) + f" (AMX {amx_share(mix):.0%})"
