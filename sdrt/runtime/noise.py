"""Seeded initial noise for the latents, by default the noise PyTorch would draw, so seeds match diffusers.

diffusers draws the latents with ``torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))``
(float32, one call for the whole batch). ``TorchCompatibleGenerator`` reproduces that in numpy without importing
torch, bit for bit against PyTorch's Linux x86-64 wheels (where ``normal_`` runs its AVX2 kernel, also on AVX512 CPUs):

* The generator is the standard 32-bit Mersenne Twister (``init_genrand``) seeded with the low 32 bits of the
  64-bit seed (``CPUGeneratorImpl::set_current_seed`` → ``at::mt19937(seed)``), so seeds 7 and 2**40+7 are the
  same noise. numpy's ``MT19937`` runs the same stream once its key is set to that state.
* A float32 tensor of 16 elements or more (``normal_fill_AVX2``): one uniform per element, ``(draw & 0xFFFFFF)·2⁻²⁴``,
  then Box-Muller on blocks of 16 (u1 = 1 − the first 8, u2 = the last 8; the first 8 outputs are r·cos θ, the
  last 8 r·sin θ). If the size is not a multiple of 16, 16 fresh uniforms are drawn and the last 16 elements
  are recomputed from them. log, sin and cos are the Cephes-style polynomials of ``avx_mathfun.h`` in float32,
  with the fused multiply-adds GCC makes of them, emulated here exactly (a build whose compiler fuses differently
  would differ by an ulp, ~2.4e-7, in about 1% of the values).
* Fewer than 16 elements (``normal_distribution<double>``): per element, two 53-bit uniforms from 64-bit draws
  (two 32-bit draws, the first the high half), r = √(−2·log1p(−u2)), θ = 2π·u1, returns r·cos θ and keeps
  r·sin θ in the generator for the next scalar draw (a later small call starts with it; the vectorized path
  neither uses nor clears it).

PyTorch builds that run the scalar ``normal_fill`` instead (those with no AVX2 kernel, as on ARM / Apple silicon,
or with ATEN_CPU_CAPABILITY=default) use libm's float log/sin/cos there: up to ~2.5e-6 from the AVX2 noise;
``kernel="scalar"`` follows them to ~2.5e-7.
diffusers pipelines loaded in float16 (or bfloat16) draw their noise in that dtype: for sizes below 16 or a multiple
of 16 (the usual latents) that is this noise rounded to float16 and the stream goes on the same; for other sizes
torch's last 16 values, and the stream after them, differ and are not reproduced here.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, Sequence, Union

import numpy as np

MAX_SEED = 2**32 - 1

Shape = Union[int, Sequence[int]]
GeneratorKind = Literal["torch", "numpy"]
TorchKernel = Literal["avx2", "scalar"]


def random_seed() -> int:
    return int(np.random.default_rng().integers(0, MAX_SEED))


class NoiseGenerator(Protocol):
    def randn(self, shape: Shape) -> np.ndarray: ...


def _shape(shape: Shape) -> tuple[int, ...]:
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    return shape


# ---------------------------------------------------------------------------------------------------------------
# The Mersenne Twister, seeded as at::mt19937


def _mt19937_key(seed: int) -> np.ndarray:
    """init_genrand(seed mod 2³²): the 624-word state of the standard MT19937 seeding."""
    key = np.empty(624, dtype=np.uint32)
    s = seed & 0xFFFFFFFF
    key[0] = s
    for i in range(1, 624):
        s = (1812433253 * (s ^ (s >> 30)) + i) & 0xFFFFFFFF
        key[i] = s
    return key


# ---------------------------------------------------------------------------------------------------------------
# float32 math of the AVX2 kernel (aten/src/ATen/native/cpu/avx_mathfun.h, normal_fill_16_AVX2)

_f32, _f64 = np.float32, np.float64


def _fma(a: np.ndarray, b, c) -> np.ndarray:
    """a·b + c with one rounding to float32, for float32 a, b, c (what a vfmadd does).

    The float64 product of two float32 is exact; the float64 sum may round, and rounding that to float32 again
    is wrong only when it lands exactly halfway between two float32: those few are corrected from the exact
    error of the sum (TwoSum)."""
    p = np.asarray(a, _f64) * np.asarray(b, _f64)
    c = np.asarray(c, _f64)
    s = p + c
    halfway = (s.view(np.uint64) & np.uint64(0x1FFFFFFF)) == np.uint64(0x10000000)
    if halfway.any():
        hp, hc, hs = (np.broadcast_to(v, s.shape)[halfway] for v in (p, c, s))
        bb = hs - hp
        err = (hp - (hs - bb)) + (hc - bb)  # hp + hc − hs, exactly
        s[halfway] = np.where(err == 0, hs, np.nextafter(hs, np.where(err > 0, np.inf, -np.inf)))
    return s.astype(_f32)


_LOG_P = [_f32(c) for c in (
    7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
    -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
)]


def _log_avx(x: np.ndarray) -> np.ndarray:
    """log256_ps for x in [2⁻²⁴, 1]."""
    x = np.maximum(x, _f32(np.finfo(_f32).tiny))
    bits = x.view(np.int32)
    e = ((bits >> 23) - 0x7F).astype(_f32) + _f32(1)
    x = ((bits & ~0x7F800000) | 0x3F000000).view(_f32)  # the mantissa, in [0.5, 1)
    small = x < _f32(0.707106781186547524)
    x = x - _f32(1) + np.where(small, x, _f32(0))  # x < √½: e -= 1, x = x + x − 1; else x = x − 1
    e = e - small.astype(_f32)
    z = x * x
    y = np.full_like(x, _LOG_P[0])
    for c in _LOG_P[1:]:
        y = _fma(y, x, c)
    y = y * x
    y = _fma(y, z, e * _f32(-2.12194440e-4))
    y = _fma(z, _f32(-0.5), y)
    return _fma(e, _f32(0.693359375), x + y)


def _sincos_avx(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sincos256_ps for x ≥ 0."""
    j = (x * _f32(1.27323954473516)).astype(np.int32)  # x·4/π, truncated
    j = (j + 1) & ~1
    y = j.astype(_f32)
    # extended precision modular arithmetic: x − y·π/4 in three parts
    x = _fma(y, _f32(-0.78515625), x)
    x = _fma(y, _f32(-2.4187564849853515625e-4), x)
    x = _fma(y, _f32(-3.77489497744594108e-8), x)
    z = x * x
    cos_poly = _fma(np.full_like(z, _f32(2.443315711809948e-5)), z, _f32(-1.388731625493765e-3))
    cos_poly = _fma(cos_poly, z, _f32(4.166664568298827e-2))
    cos_poly = _fma(cos_poly * z, z, -(z * _f32(0.5))) + _f32(1)
    sin_poly = _fma(np.full_like(z, _f32(-1.9515295891e-4)), z, _f32(8.3321608736e-3))
    sin_poly = _fma(sin_poly, z, _f32(-1.6666654611e-1))
    sin_poly = _fma(sin_poly * z, x, x)
    first = (j & 2) == 0  # the sine polynomial gives the sine, else the two swap
    s = np.where(first, sin_poly, cos_poly)
    c = np.where(first, cos_poly, sin_poly)
    s = np.where((j & 4) != 0, -s, s)
    c = np.where((~(j - 2) & 4) != 0, -c, c)
    return s, c


_TWO_PI_F32 = _f32(2.0 * math.pi)
_CHUNK_ROWS = 2048  # blocks of 16 per numpy pass


def _box_muller_16(u: np.ndarray, kernel: TorchKernel = "avx2") -> np.ndarray:
    """Box-Muller on rows of 16 uniforms, (k, 16) → (k, 16) standard normals, as ``normal_fill_16_AVX2`` does it
    (``kernel="avx2"``) or the scalar ``normal_fill_16`` with libm's float log/cos/sin, here correctly rounded
    (``kernel="scalar"``)."""
    u1 = np.ascontiguousarray(u[:, :8]).reshape(-1)  # contiguous: numpy is much faster on them
    u2 = np.ascontiguousarray(u[:, 8:]).reshape(-1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if kernel == "avx2":
            radius = np.sqrt(_f32(-2) * _log_avx(_f32(1) - u1))
            s, c = _sincos_avx(_TWO_PI_F32 * u2)
        else:
            radius = np.sqrt(_f32(-2) * np.log((_f32(1) - u1).astype(_f64)).astype(_f32))
            theta = (2.0 * math.pi * u2.astype(_f64)).astype(_f32)  # 2.0f * pi<double> * u2: in double
            s, c = (f(theta.astype(_f64)).astype(_f32) for f in (np.sin, np.cos))
    radius, s, c = (v.reshape(-1, 8) for v in (radius, s, c))
    out = np.empty(u.shape, _f32)
    # both end with n·std + mean, std = 1, mean = 0: exact, except that it turns −0 into +0
    np.add(radius * c, _f32(0), out=out[:, :8])
    np.add(radius * s, _f32(0), out=out[:, 8:])
    return out


# ---------------------------------------------------------------------------------------------------------------


class TorchCompatibleGenerator:
    """``torch.Generator("cpu").manual_seed(seed)`` for ``torch.randn(shape, generator=g)`` (float32), in numpy.

    Stateful like torch's: successive ``randn`` calls continue the stream (as a stochastic sampler drawing its step
    noise from the generator that drew the initial latents).

    ``kernel`` picks the PyTorch build to match for 16 elements or more: ``"avx2"`` (x86-64 CPUs: bit for bit) or
    ``"scalar"`` (ARM/Apple silicon, or ATEN_CPU_CAPABILITY=default: within an ulp or so, libm's float functions
    not being correctly rounded). Fewer than 16 elements are the same on both."""

    kind = "torch"

    def __init__(self, seed: int, kernel: TorchKernel = "avx2"):
        if kernel not in ("avx2", "scalar"):
            raise ValueError(f"unknown kernel {kernel!r}: expected 'avx2' or 'scalar'")
        self.kernel = kernel
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> TorchCompatibleGenerator:
        seed = int(seed)
        if not -(2**63) <= seed < 2**64:  # torch takes a uint64, or an int64 read as its two's complement
            raise ValueError(f"seed must be in [-2**63, 2**64), got {seed}")
        self.seed = seed
        self._bitgen = np.random.MT19937()
        self._bitgen.state = {"bit_generator": "MT19937", "state": {"key": _mt19937_key(seed), "pos": 624}}
        self._next_double_normal: float | None = None  # normal_distribution<double>'s cached second value
        return self

    def initial_seed(self) -> int:
        return self.seed

    def _uniform24(self, n: int) -> np.ndarray:
        raw = self._bitgen.random_raw(n)
        return (raw & 0xFFFFFF).astype(_f32) * _f32(2.0**-24)

    def _uniform53(self) -> float:
        hi, lo = (int(v) for v in self._bitgen.random_raw(2))
        return ((hi << 32 | lo) & ((1 << 53) - 1)) * 2.0**-53

    def _normal_double(self) -> float:
        if self._next_double_normal is not None:
            value, self._next_double_normal = self._next_double_normal, None
            return value
        u1 = self._uniform53()
        u2 = self._uniform53()
        r = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._next_double_normal = r * math.sin(theta)
        return r * math.cos(theta)

    def randn(self, shape: Shape) -> np.ndarray:
        shape = _shape(shape)
        n = math.prod(shape)
        if n < 16:
            return np.array([self._normal_double() for _ in range(n)], dtype=_f32).reshape(shape)
        full = n - n % 16
        out = np.empty(n, _f32)
        blocks, rows = self._uniform24(n)[:full].reshape(-1, 16), out[:full].reshape(-1, 16)
        for i in range(0, len(blocks), _CHUNK_ROWS):  # in cache-sized chunks: twice as fast as all at once
            rows[i:i + _CHUNK_ROWS] = _box_muller_16(blocks[i:i + _CHUNK_ROWS], self.kernel)
        if full != n:  # redo the last 16 elements from 16 fresh uniforms
            out[n - 16:] = _box_muller_16(self._uniform24(16).reshape(1, 16), self.kernel).reshape(-1)
        return out.reshape(shape)


class NumpyGenerator:
    """numpy's own generator (PCG64), seeded with ``seed``: standard normals, float32. Not diffusers' noise."""

    kind = "numpy"

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    def randn(self, shape: Shape) -> np.ndarray:
        return self._rng.standard_normal(_shape(shape), dtype=_f32)


class PerImageGenerators:
    """One generator per image of a batch (AUTOMATIC1111's seed, seed+1, …; diffusers' list of generators): image
    i's noise is exactly what a one-image run with its seed draws, so joined requests keep their own images."""

    def __init__(self, generators: list):
        self.generators = generators
        self.kind = generators[0].kind

    def randn(self, shape: Shape) -> np.ndarray:
        shape = _shape(shape)
        if shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} per-image generators cannot draw a batch of {shape[0]}")
        return np.concatenate([g.randn((1, *shape[1:])) for g in self.generators])


def make_generator(seed: int, kind: GeneratorKind = "torch") -> TorchCompatibleGenerator | NumpyGenerator:
    """A seeded noise generator with ``randn(shape) -> float32 array``: ``"torch"`` draws what
    ``torch.Generator("cpu").manual_seed(seed)`` would (diffusers' seeds), ``"numpy"`` numpy's own stream."""
    if kind == "torch":
        return TorchCompatibleGenerator(seed)
    if kind == "numpy":
        return NumpyGenerator(seed)
    raise ValueError(f"unknown generator kind {kind!r}: expected 'torch' or 'numpy'")


def initial_noise(seed: int, shape: tuple[int, ...], kind: GeneratorKind = "torch") -> np.ndarray:
    """Standard normal noise for the whole batch from one seed (diffusers' convention: one generator draws the
    batch's latents in one call), float32. ``kind="torch"`` gives diffusers' latents for that seed."""
    return make_generator(seed, kind).randn(shape)
