"""Single-file (LDM layout) checkpoints: written here from tiny random pipelines, then loaded back."""

import socket

import pytest
import torch
from safetensors.torch import save_file

from sdrt.errors import ModelSourceError
from sdrt.export.builtin import build_random_pipeline
from sdrt.export.single_file import detect_arch, load_single_file

import sdrt.export.ldm_layout as ldm_layout

PARTS = ("unet", "vae", "text_encoder")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the hub fails the test instead of silently downloading."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module", params=["tiny", "tiny-sd2", "tiny-inpaint"])
def tiny(request, tmp_path_factory):
    arch = request.param
    pipe = build_random_pipeline(arch, seed=1)
    path = tmp_path_factory.mktemp(arch) / "model.safetensors"
    ldm_layout.write_single_file(pipe, path)
    return arch, pipe, path


def test_round_trip_gives_identical_weights(tiny):
    arch, original, path = tiny
    loaded = load_single_file(path, arch=arch)
    for part in PARTS:
        want, got = getattr(original, part).state_dict(), getattr(loaded, part).state_dict()
        assert got.keys() == want.keys(), part
        for key in want:
            assert got[key].dtype == want[key].dtype, f"{part}.{key}"
            assert torch.equal(got[key], want[key]), f"{part}.{key}"
    assert type(loaded.scheduler) is type(original.scheduler)
    assert loaded.scheduler.config.prediction_type == original.scheduler.config.prediction_type
    assert loaded.tokenizer.pad_token == original.tokenizer.pad_token
    assert loaded.tokenizer.model_max_length == 77


def test_pickle_loads_only_when_allowed(tiny, tmp_path):
    arch, original, _ = tiny
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": ldm_layout.sd_to_ldm(original)}, path)  # nested, as training checkpoints are
    with pytest.raises(ModelSourceError, match="pickle"):
        load_single_file(path, arch=arch)
    loaded = load_single_file(path, arch=arch, allow_pickle=True)
    for part in PARTS:
        want, got = getattr(original, part).state_dict(), getattr(loaded, part).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), part


def test_wrong_architecture_is_refused(tiny):
    arch, _, path = tiny
    other = "tiny-sd2" if arch == "tiny" else "tiny"
    with pytest.raises(ModelSourceError, match="architecture"):
        load_single_file(path, arch=other)


def test_missing_component_is_refused(tiny, tmp_path):
    arch, pipe, _ = tiny
    state = {k: v for k, v in ldm_layout.sd_to_ldm(pipe).items() if not k.startswith(ldm_layout.VAE_PREFIX)}
    path = tmp_path / "no_vae.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelSourceError, match="incomplete"):
        load_single_file(path, arch=arch)


def test_unknown_arch_name_is_refused(tiny):
    with pytest.raises(ModelSourceError, match="unknown architecture"):
        load_single_file(tiny[2], arch="../arch/tiny")


def _marker_file(tmp_path, tensors: dict[str, tuple[int, ...]]):
    path = tmp_path / "markers.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, str(path))
    return path


def test_detects_sd1_and_sd2(tmp_path):
    v1_marker = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"
    v2_marker = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
    assert detect_arch(_marker_file(tmp_path, {v1_marker: (1, 1), v2_marker: (2, 768)})) == "sd15"
    assert detect_arch(_marker_file(tmp_path, {v1_marker: (1, 1), v2_marker: (2, 1024)})) == "sd21"


def test_detects_inpainting_checkpoints(tmp_path):
    """A 9-channel first convolution marks an inpainting U-Net (SD 1.5 or, with OpenCLIP's 1024-wide keys, SD 2)."""
    v1_marker = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"
    v2_marker = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    sd15 = {v1_marker: (1, 1), v2_marker: (2, 768), conv_in: (4, 9, 3, 3)}
    assert detect_arch(_marker_file(tmp_path, sd15)) == "sd15-inpaint"
    assert detect_arch(_marker_file(tmp_path, sd15 | {v2_marker: (2, 1024)})) == "sd2-inpaint"
    assert detect_arch(_marker_file(tmp_path, sd15 | {conv_in: (4, 4, 3, 3)})) == "sd15"


def test_detects_sdxl_base_and_refiner_and_refuses_its_other_variants(tmp_path):
    base = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
    refiner = "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"
    assert detect_arch(_marker_file(tmp_path, {base: (4,)})) == "sdxl"
    assert detect_arch(_marker_file(tmp_path, {refiner: (4,)})) == "sdxl-refiner"
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    with pytest.raises(ModelSourceError, match="SDXL variant"):
        detect_arch(_marker_file(tmp_path, {base: (4,), conv_in: (320, 9, 3, 3)}))


@pytest.mark.parametrize("arch", ["tiny-sdxl", "tiny-sdxl-refiner"])
def test_sdxl_single_files_load_with_identical_weights(tmp_path, arch):
    """Stability's SGM layout (conditioner.embedders.N), written from the tiny pipelines and read back offline
    through diffusers' single-file loader with sdrt's configs (the tiny encoders are too shallow for detection)."""
    from sdrt.export.builtin import build_builtin

    original = build_builtin(arch)
    path = tmp_path / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in ldm_layout.sdxl_to_ldm(original).items()}, str(path))
    loaded = load_single_file(path, arch)
    assert type(loaded).__name__ == type(original).__name__
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(original, name) is None:
            assert getattr(loaded, name) is None
            continue
        expected, got = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert expected.keys() == got.keys(), name
        assert all(torch.equal(expected[k], got[k]) for k in expected), name


def test_garbage_keys_are_refused(tmp_path):
    path = _marker_file(tmp_path, {"foo.bar": (3,), "lm_head.weight": (2, 2)})
    with pytest.raises(ModelSourceError, match="not a Stable Diffusion checkpoint"):
        load_single_file(path)


def test_pickle_checkpoint_is_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"never unpickled")
    with pytest.raises(ModelSourceError, match="pickle"):
        load_single_file(path)


@pytest.mark.parametrize("name", ["model.txt", "model.safetensors"])
def test_non_safetensors_content_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00\x01 this is not a checkpoint")
    with pytest.raises(ModelSourceError):
        load_single_file(path)


def test_truncated_file_is_refused(tiny, tmp_path):
    data = tiny[2].read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelSourceError, match="truncated or corrupt"):
        load_single_file(path, arch=tiny[0])


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_single_file(tmp_path / "absent.safetensors")


def test_cli_exports_a_checkpoint(tiny, tmp_path):
    """`sdrt export model.safetensors OUT --arch …` end to end; the hash is AUTOMATIC1111's short hash."""
    import hashlib
    import subprocess
    import sys

    from sdrt.manifest import load_manifest

    arch, _, path = tiny
    if arch != "tiny":
        pytest.skip("one family is enough for the end-to-end run")
    proc = subprocess.run([sys.executable, "-m", "sdrt.cli", "export", str(path), str(tmp_path / "out"), "--arch", arch,
                           "--no-lora"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    manifest = load_manifest(tmp_path / "out")
    assert manifest.source["kind"] == "single_file" and manifest.validation["passed"]
    assert manifest.model_hash == hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def test_an_sdxl_single_file_exports_and_generates_as_the_folder_does(tmp_path, export_dir):
    import numpy as np

    from sdrt.export import export
    from sdrt.export.builtin import build_builtin
    from sdrt.runtime import Pipeline

    path = tmp_path / "tiny-sdxl.safetensors"
    save_file({k: v.contiguous() for k, v in ldm_layout.sdxl_to_ldm(build_builtin("tiny-sdxl")).items()}, str(path))
    manifest = export(str(path), tmp_path / "out", arch="tiny-sdxl", size_range=(64, 512))
    assert manifest.family == "sdxl" and manifest.source["kind"] == "single_file" and manifest.validation["passed"]
    kwargs = dict(num_inference_steps=3, height=64, width=64, seed=1)
    with Pipeline.load(tmp_path / "out") as from_file, Pipeline.load(export_dir("tiny-sdxl")) as built_in:
        a, b = from_file("a red circle", **kwargs), built_in("a red circle", **kwargs)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
