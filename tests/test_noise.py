"""Seeded noise: the torch-compatible generator against torch.randn itself, the numpy one, no torch on import.

torch is imported here only as the reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest
import torch

from sdrt.runtime.noise import (
    MAX_SEED,
    NumpyGenerator,
    TorchCompatibleGenerator,
    _fma,
    initial_noise,
    make_generator,
    random_seed,
)

# x86-64 torch runs normal_'s AVX2 kernel (also on AVX512 CPUs): matched bit for bit. Elsewhere (ARM) the scalar
# kernel, with libm's float log/sin/cos: matched to about an ulp.
AVX2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
KERNEL = "avx2" if AVX2 else "scalar"

SEEDS = [0, 1, 42, 2**32 - 1, 2**40 + 7, 2**63 + 2**62 + 12345, -1]
SHAPES = [(1, 4, 64, 64), (2, 4, 96, 64), (1, 4, 5, 7), (3, 4, 9, 11), (33,), (100,), (1000,), (3,), (15,), (16,),
          (17,), (1, 4, 1, 1), (1,), (0,)]


def torch_randn(seed: int, shape) -> np.ndarray:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32).numpy()


def assert_matches_torch(ours: np.ndarray, ref: np.ndarray, small: bool = False) -> None:
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    if AVX2 or small:  # fewer than 16 elements: the same double-precision path everywhere
        np.testing.assert_array_equal(ours, ref)
    else:
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_initial_noise_is_torch_randn_of_the_seed(seed):
    for shape in SHAPES:
        ref = torch_randn(seed, shape)
        ours = initial_noise(seed, shape) if AVX2 else TorchCompatibleGenerator(seed, KERNEL).randn(shape)
        assert_matches_torch(ours, ref, small=ref.size < 16)


def test_successive_draws_continue_the_stream_as_torch():
    # sizes below 16 share normal_distribution's cached second value across calls; the vectorized path leaves it be
    sizes = [17, 5, 64, 3, 1, 20, 2, 15, 16, 7, (1, 4, 5, 7), 1, (2, 4, 8, 8), 9]
    for seed in (0, 2024):
        g = torch.Generator("cpu").manual_seed(seed)
        ours = TorchCompatibleGenerator(seed, KERNEL)
        for size in sizes:
            ref = torch.randn(size, generator=g).numpy()
            assert_matches_torch(ours.randn(size), ref, small=ref.size < 16)


def test_manual_seed_restarts_the_stream_and_drops_the_cached_normal():
    g = TorchCompatibleGenerator(5)
    first = g.randn(3)  # leaves a cached value
    g.randn(40)
    assert g.manual_seed(5) is g and g.initial_seed() == 5
    np.testing.assert_array_equal(g.randn(3), first)


def test_the_seed_is_taken_modulo_2_32_as_torch_does():
    np.testing.assert_array_equal(initial_noise(7, (2, 9)), initial_noise(2**40 + 7, (2, 9)))
    np.testing.assert_array_equal(initial_noise(-1, (40,)), initial_noise(MAX_SEED, (40,)))
    with pytest.raises(ValueError, match="seed"):
        TorchCompatibleGenerator(2**64)


def test_scalar_kernel_matches_torch_without_avx2(tmp_path):
    """What ARM builds do, checked on this machine by turning the AVX2 kernel off."""
    shapes = [(1, 4, 16, 16), (1, 4, 5, 7), (17,)]
    script = textwrap.dedent(f"""
        import numpy as np, torch
        g = torch.Generator("cpu").manual_seed(3)
        out = [torch.randn(s, generator=torch.Generator("cpu").manual_seed(42)).numpy() for s in {shapes!r}]
        out += [torch.randn(s, generator=g).numpy() for s in {shapes!r}]
        np.savez({{!r}}, *out, cap=torch.backends.cpu.get_cpu_capability())
    """)
    path = str(tmp_path / "torch.npz")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    proc = subprocess.run([sys.executable, "-c", script.format(path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    with np.load(path) as data:
        assert str(data["cap"]) == "DEFAULT"
        refs = [data[f"arr_{i}"] for i in range(2 * len(shapes))]
    g = TorchCompatibleGenerator(3, "scalar")
    ours = [TorchCompatibleGenerator(42, "scalar").randn(s) for s in shapes] + [g.randn(s) for s in shapes]
    for o, r in zip(ours, refs):
        np.testing.assert_allclose(o, r, rtol=0, atol=1e-6)


def test_fma_is_correctly_rounded_where_float64_would_round_twice():
    # a·b + 64 lands just above a float32 midpoint: float64 rounds the sum onto the midpoint, then ties to even
    checked = 0
    for a_int in range(2**23 + 1, 2**24, 2):
        b_int = (2**30 + 1) * pow(a_int, -1, 2**31) % 2**31  # a·b ≡ 2^30 + 1 (mod 2^31): the sum is 2^-48 over
        if not 2**23 <= b_int < 2**24:
            continue
        a, b = np.float32(a_int * 2.0**-24), np.float32(b_int * 2.0**-24)
        exact = Fraction(a_int * b_int, 2**48) + 64
        got = _fma(np.array([a]), b, np.float32(64))[0]
        below, above = np.float32(float(exact)), np.nextafter(np.float32(float(exact)), np.float32(np.inf))
        nearest = below if abs(Fraction(float(below)) - exact) < abs(Fraction(float(above)) - exact) else above
        assert got == nearest
        checked += 1
        if checked == 8:
            break
    assert checked == 8


def test_numpy_kind_is_numpys_own_stream():
    shape = (2, 4, 8, 8)
    expected = np.random.default_rng(9).standard_normal(shape, dtype=np.float32)
    np.testing.assert_array_equal(initial_noise(9, shape, kind="numpy"), expected)
    rng, g = np.random.default_rng(11), make_generator(11, "numpy")
    assert isinstance(g, NumpyGenerator)
    for size in [(3,), (2, 5), 16]:
        np.testing.assert_array_equal(g.randn(size), rng.standard_normal(size, dtype=np.float32))


def test_make_generator_and_the_default_kind():
    g = make_generator(123)
    assert isinstance(g, TorchCompatibleGenerator) and g.kind == "torch"
    np.testing.assert_array_equal(g.randn((1, 4, 8, 8)), initial_noise(123, (1, 4, 8, 8)))
    out = make_generator(1).randn(20)
    assert out.shape == (20,) and out.dtype == np.float32
    with pytest.raises(ValueError, match="kind"):
        make_generator(1, "cuda")
    with pytest.raises(ValueError, match="kernel"):
        TorchCompatibleGenerator(1, "avx512")
    assert 0 <= random_seed() <= MAX_SEED


def test_importing_noise_does_not_import_torch():
    script = (
        "import sys\n"
        "import sdrt.runtime.noise as n\n"
        "n.make_generator(1).randn((1, 4, 8, 8)); n.make_generator(1).randn(3); n.initial_noise(1, (2,), 'numpy')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers'))\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
