"""Shared fixtures: tiny exports are made once per test session, in a temporary folder."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    """Export a built-in model once per session: ``export_dir("tiny", fp16=False)`` → folder. ``lora``: with LoRA
    sites, by default in fp32 only: no test of fp16 graphs needs them, and graphs with sites take ~6× longer to build
    with TensorRT and to compile with OpenVINO (engines with LoRA inputs are tested on the fp32 text encoder)."""
    from sdrt.export import export

    made = {}

    def get(model: str = "tiny", fp16: bool = False, lora: bool | None = None, deep_cache: bool = False):
        lora = not fp16 if lora is None else lora
        key = (model, fp16, lora, deep_cache)
        if key not in made:
            name = f"{model}-{'fp16' if fp16 else 'fp32'}{'' if lora else '-nolora'}{'-deepcache' if deep_cache else ''}"
            out = tmp_path_factory.mktemp(name) / "export"
            export(model, out, fp16=fp16, lora=lora, deep_cache=deep_cache)
            made[key] = out
        return made[key]

    return get


@pytest.fixture(scope="session")
def reference_pipeline():
    """The diffusers pipeline a built-in export came from (same seed, same weights)."""
    from sdrt.export.builtin import build_builtin

    made = {}

    def get(model: str = "tiny"):
        if model not in made:
            made[model] = build_builtin(model)
        return made[model]

    return get


@pytest.fixture(scope="module")
def pipelines(export_dir):
    """The runtime Pipeline of ``tiny`` and ``tiny-sd2`` (epsilon and v-prediction), for a module's tests."""
    from sdrt.runtime import Pipeline

    loaded = {m: Pipeline.load(export_dir(m)) for m in ("tiny", "tiny-sd2")}
    yield loaded
    for p in loaded.values():
        p.close()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU and a TensorRT flavour; skipped elsewhere")
    config.addinivalue_line("markers", "slow: minutes of installs from the package registries; `make test-slow` runs "
                                       "them, `make test` does not")
