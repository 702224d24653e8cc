"""TensorRT engines, built for real with TensorRT for RTX ahead of time (no GPU needed): profiles, the
content-keyed cache, atomic writes and corrupt-file recovery, build failures, profile selection and its messages.
Running the engines needs a GPU: those tests are marked ``gpu`` and skip elsewhere."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt_rtx", reason="the tensorrt-rtx extra is not installed")

from sdrt.cli import main  # noqa: E402
from sdrt.engines import build, dynamic_profile, static_profile  # noqa: E402
from sdrt.engines.builder import BuildRequest, EngineBuildError, build_engine  # noqa: E402
from sdrt.engines.flavours import load_flavour, local_gpu, supported_targets  # noqa: E402
from sdrt.engines.profiles import component_shapes  # noqa: E402
from sdrt.engines.select import no_engine_message, pick, uncovered  # noqa: E402
from sdrt.errors import BackendError, UserInputError  # noqa: E402
from sdrt.manifest import load_manifest  # noqa: E402
from sdrt.runtime import Pipeline  # noqa: E402
from sdrt.components import RunShape  # noqa: E402

TARGETS = "8.9"  # one target keeps the builds short; several are tried on the text encoder alone
GPU = local_gpu()


@pytest.fixture(scope="module")
def folder(export_dir, tmp_path_factory):
    """A copy of the fp16 tiny export (engines are written into it) with static 64x64 engines for SM89."""
    out = tmp_path_factory.mktemp("trt") / "tiny16"
    shutil.copytree(export_dir("tiny", fp16=True), out)
    outcomes = build(out, "tensorrt-rtx", [static_profile(64, 64)], compute_capabilities=TARGETS)
    assert [o.status for o in outcomes] == ["built"] * 4
    return out


def _records(folder, component=None):
    return [r for r in load_manifest(folder).engines.values() if component in (None, r["component"])]


def _shapes(folder, component, batch, height, width, chunks=1):
    """The concrete input shapes of one run (the max end of a static profile: with guidance)."""
    return {k: v[2] for k, v in component_shapes(load_manifest(folder), component,
                                                 static_profile(height, width, batch, chunks * 75)).items()}


def test_static_engines_are_built_and_recorded(folder):
    records = _records(folder)
    assert sorted(r["component"] for r in records) == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    unet = next(r for r in records if r["component"] == "unet")
    plan = folder / unet["file"]
    assert plan.is_file() and plan.stat().st_size == unet["bytes"] > 100_000
    assert hashlib.sha256(plan.read_bytes()).hexdigest() == unet["sha256"]
    assert unet["targets"] == ["8.9"] and unet["version"] == trt.__version__ and unet["precision"] == "fp16"
    assert unet["build_seconds"] > 0 and unet["builder_log"]["errors"] == []
    assert any("Engine generation completed" in n for n in unet["builder_log"]["notes"])
    assert unet["graph_nodes"]["cleaned"] < unet["graph_nodes"]["exported"]  # constants folded
    # batch 1 at 64x64: the U-Net takes 1 (no guidance) to 2 (guidance) latents of 8x8
    assert unet["shapes"]["sample"] == [[1, 4, 8, 8], [2, 4, 8, 8], [2, 4, 8, 8]]
    assert unet["shapes"]["encoder_hidden_states"][2][1] == 77
    # the ControlNet residuals, each at its level's size (8x8 latents: 8, 4 and 2)
    assert unet["shapes"]["down_block_residual_0"] == [[1, 32, 8, 8], [2, 32, 8, 8], [2, 32, 8, 8]]
    assert unet["shapes"]["mid_block_residual"] == [[1, 64, 2, 2], [2, 64, 2, 2], [2, 64, 2, 2]]
    assert not list((folder / "engines").glob("*.tmp"))  # nothing half-written


def test_controlnet_engines_are_built_ahead_of_time(folder, reference_pipeline, tmp_path):
    """A ControlNet added to the fp16 export (its graph fp16 too) gets an engine whose profile covers the control
    image at the output size; a call needs it only when it uses that ControlNet."""
    from controlnet_files import make_controlnet
    from sdrt.export.controlnet import add_to_export

    out = tmp_path / "tiny16"
    shutil.copytree(folder, out)
    make_controlnet(reference_pipeline("tiny").unet, 1, 8).save_pretrained(tmp_path / "edges")
    add_to_export(out, [str(tmp_path / "edges")])
    [outcome] = build(out, "tensorrt-rtx", [static_profile(64, 64)], compute_capabilities=TARGETS,
                      components=("controlnet.edges",))
    record = next(r for r in _records(out, "controlnet.edges"))
    assert outcome.status == "built" and record["precision"] == "fp16"
    assert record["shapes"]["controlnet_cond"] == [[1, 3, 64, 64], [2, 3, 64, 64], [2, 3, 64, 64]]
    assert record["shapes"]["sample"] == [[1, 4, 8, 8], [2, 4, 8, 8], [2, 4, 8, 8]]
    records, manifest = _records(out), load_manifest(out)
    assert uncovered(records, manifest, RunShape(1, 64, 64)) == []
    assert uncovered(records, manifest, RunShape(1, 64, 64, controlnets=("controlnet.edges",))) == []
    other_size = RunShape(1, 64, 96, controlnets=("controlnet.edges",))
    assert set(uncovered(records, manifest, other_size)) == {"unet", "vae_decoder", "controlnet.edges"}


def test_sdxl_engines_take_the_extra_inputs(export_dir, tmp_path):
    """tiny-sdxl fp16 (its VAE kept fp32), ahead of time: both text encoders, and the U-Net's profile covers the
    pooled embeddings and time ids with the guidance-doubled batch."""
    out = tmp_path / "sdxl16"
    shutil.copytree(export_dir("tiny-sdxl", fp16=True), out)
    outcomes = build(out, "tensorrt-rtx", [static_profile(64, 64)], compute_capabilities="8.9",
                     components=("text_encoder_2", "unet", "vae_decoder"))  # the first encoder is tiny's, built above
    assert sorted(o.status for o in outcomes) == ["built"] * 3
    unet = next(r for r in _records(out, "unet"))
    assert unet["shapes"]["text_embeds"] == [[1, 40], [2, 40], [2, 40]]
    assert unet["shapes"]["time_ids"] == [[1, 6], [2, 6], [2, 6]]
    assert unet["shapes"]["encoder_hidden_states"][2] == [2, 77, 96]
    assert next(r for r in _records(out, "vae_decoder"))["precision"] == "fp32"


@pytest.mark.parametrize("model, tokens, extras", [("tiny-sd3", 77 + 256, {"pooled_projections": 64}),
                                                   ("tiny-flux", 512, {"pooled_projections": 32, "guidance": None})])
def test_transformer_engines_are_built_ahead_of_time(export_dir, tmp_path, model, tokens, extras):
    """SD 3's and Flux's fp16 exports: the transformer's profile (a fixed text length, the extras with the
    guidance-doubled batch), and T5's engine in fp32 as its graph (T5 overflows in fp16)."""
    out = tmp_path / model
    shutil.copytree(export_dir(model, fp16=True), out)
    outcomes = build(out, "tensorrt-rtx", [static_profile(64, 96)], compute_capabilities=TARGETS,
                     components=("t5_encoder", "unet"))
    assert sorted(o.status for o in outcomes) == ["built"] * 2
    unet = next(r for r in _records(out, "unet"))
    assert unet["precision"] == "fp16" and unet["shapes"]["sample"][2] == [2, 16, 8, 12]
    assert unet["shapes"]["encoder_hidden_states"][2][:2] == [2, tokens]
    for name, width in extras.items():
        assert unet["shapes"][name][2] == ([2, width] if width else [2])
    t5 = next(r for r in _records(out, "t5_encoder"))
    assert t5["precision"] == "fp32" and t5["shapes"]["input_ids"][2] == [2, tokens - (77 if model == "tiny-sd3" else 0)]


def test_lora_and_embedding_inputs_get_their_own_axes(export_dir, tmp_path):
    """A text encoder with LoRA sites and textual-inversion vectors (the fp32 export: TensorRT builds fp16 engines
    from fp32 graphs too): each factor's rank and the vectors' rows are dynamic in the profile."""
    out = tmp_path / "tiny"
    shutil.copytree(export_dir("tiny"), out)
    [outcome] = build(out, "tensorrt-rtx", [static_profile(64, 64)], compute_capabilities=TARGETS,
                      components=("text_encoder",))
    shapes = next(r for r in _records(out))["shapes"]
    assert outcome.status == "built" and shapes["embedding_vectors"] == [[1, 32], [1, 32], [150, 32]]
    factors = [v for k, v in shapes.items() if k.endswith(".lora_down")]
    assert factors and all([row[1] for row in v] == [1, 1, 256] for v in factors)


def test_same_inputs_are_a_cache_hit(folder):
    stamps = {p: p.stat().st_mtime_ns for p in (folder / "engines").glob("*.plan")}
    outcomes = build(folder, "tensorrt-rtx", [static_profile(64, 64)], compute_capabilities=TARGETS)
    assert {o.status for o in outcomes} == {"cached"}
    assert {p: p.stat().st_mtime_ns for p in (folder / "engines").glob("*.plan")} == stamps


def test_dynamic_profile_lives_beside_the_static_one(folder):
    profile = dynamic_profile("1x64x64", "1x64x64", "2x128x128", max_tokens=150)
    [outcome] = build(folder, "tensorrt-rtx", [profile], compute_capabilities=TARGETS, components=("unet",))
    assert outcome.status == "built"
    unets = _records(folder, "unet")
    assert len(unets) == 2
    dynamic = next(r for r in unets if r["file"].endswith(outcome.file.name))
    assert dynamic["shapes"]["sample"] == [[1, 4, 8, 8], [2, 4, 8, 8], [4, 4, 16, 16]]
    assert dynamic["shapes"]["encoder_hidden_states"][2][1] == 154  # two 77-token chunks
    # the run picks the narrowest profile that covers it
    assert pick(unets, "unet", _shapes(folder, "unet", 1, 64, 64))["profile"]["height"] == [64, 64, 64]
    assert pick(unets, "unet", _shapes(folder, "unet", 2, 128, 96, chunks=2)) is dynamic
    assert pick(unets, "unet", _shapes(folder, "unet", 1, 256, 256)) is None


def test_changed_target_profile_or_onnx_rebuilds(folder, tmp_path):
    def text_encoder(target_folder, profile, targets):
        [o] = build(target_folder, "tensorrt-rtx", [profile], compute_capabilities=targets, components=("text_encoder",))
        return o

    keys = lambda f: {r["key"] for r in _records(f, "text_encoder")}  # noqa: E731
    before = keys(folder)
    assert text_encoder(folder, static_profile(64, 64), "8.6").status == "built"  # another target
    several = text_encoder(folder, static_profile(64, 64), "8.9,8.6")  # one engine for both, in order
    assert several.status == "built"
    assert next(r for r in _records(folder) if r["file"].endswith(several.file.name))["targets"] == ["8.6", "8.9"]
    assert text_encoder(folder, static_profile(64, 64), "8.6,8.9").status == "cached"
    assert text_encoder(folder, static_profile(64, 64, batch=2), TARGETS).status == "built"  # another profile
    assert len(keys(folder) - before) == 3
    # another model: the same folder with a changed text encoder graph (as a new export would write it)
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    import onnx

    path = changed / "text_encoder.onnx"
    model = onnx.load(str(path))
    model.doc_string = "fine-tuned"
    onnx.save(model, str(path))
    m = load_manifest(changed)
    comp = replace(m.components["text_encoder"], sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    replace(m, components={**m.components, "text_encoder": comp}).save(changed)
    assert text_encoder(changed, static_profile(64, 64), TARGETS).status == "built"
    assert text_encoder(changed, static_profile(64, 64), TARGETS).status == "cached"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_engine_is_rebuilt_not_trusted(folder, damage):
    [record] = [r for r in _records(folder, "vae_encoder") if r["profile"]["height"] == [64, 64, 64]]
    plan = folder / record["file"]
    data = plan.read_bytes()
    plan.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-16] + bytes(16))
    [outcome] = build(folder, "tensorrt-rtx", [static_profile(64, 64)], compute_capabilities=TARGETS,
                      components=("vae_encoder",))
    assert outcome.status == "rebuilt" and outcome.file == plan
    [again] = [r for r in _records(folder, "vae_encoder") if r["key"] == record["key"]]
    assert plan.stat().st_size == again["bytes"]
    assert hashlib.sha256(plan.read_bytes()).hexdigest() == again["sha256"]


def test_a_failed_build_writes_nothing_and_says_why(folder):
    files = sorted(p.name for p in (folder / "engines").iterdir())
    engines = load_manifest(folder).engines
    with pytest.raises(EngineBuildError, match="refittable engines only on a GPU.*without --refit"):
        build(folder, "tensorrt-rtx", [static_profile(64, 64)], compute_capabilities=TARGETS,
              components=("vae_encoder",), refit=True)
    assert sorted(p.name for p in (folder / "engines").iterdir()) == files
    assert load_manifest(folder).engines == engines


def test_an_unsupported_operator_names_the_file_and_the_operator(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Unique", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    path = tmp_path / "unique.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    request = BuildRequest(path, {"x": ((4,), (4,), (4,))}, targets=("8.6",), cleanup=False)
    with pytest.raises(EngineBuildError, match=r"cannot parse .*unique\.onnx.*Unique.*UNSUPPORTED"):
        build_engine(load_flavour("tensorrt-rtx"), request)


def test_profile_selection_messages(folder):
    manifest = load_manifest(folder)
    records = [r for r in _records(folder) if r["targets"] == ["8.9"] and r["profile"] == static_profile(64, 64).to_json()]
    assert len(records) == 4  # the fixture's: batch 1 at 64x64, one prompt chunk
    assert uncovered(records, manifest, RunShape(1, 64, 64, encodes_image=True)) == []
    # a text encoder engine serves any image size; the U-Net and VAE do not
    assert sorted(uncovered(records, manifest, RunShape(1, 96, 96, encodes_image=True))) == [
        "unet", "vae_decoder", "vae_encoder"]
    assert sorted(uncovered(records, manifest, RunShape(2, 64, 64))) == ["text_encoder", "unet", "vae_decoder"]
    assert sorted(uncovered(records, manifest, RunShape(1, 64, 64, chunks=2))) == ["text_encoder", "unet"]
    message = no_engine_message(folder, "tensorrt-rtx", "unet", records, RunShape(1, 96, 96))
    assert "covers batch 1 at 96x96" in message and "batch 1, height 64, width 64" in message
    assert f"sdrt build {folder} --backend tensorrt-rtx --static 96x96 --batch 1" in message
    assert "auto-build" in message


def test_bad_requests_get_clear_errors(folder, monkeypatch):
    with pytest.raises(UserInputError, match="cannot target compute capability 9.0.*8.6, 8.9"):
        build(folder, "tensorrt-rtx", compute_capabilities="9.0")
    with pytest.raises(UserInputError, match="write MAJOR.MINOR"):
        build(folder, "tensorrt-rtx", compute_capabilities="sm86")
    with pytest.raises(UserInputError, match="outside this export's sizes"):
        build(folder, "tensorrt-rtx", [static_profile(64, 4096)], compute_capabilities=TARGETS)
    with pytest.raises(UserInputError, match="--min <= --opt <= --max"):
        dynamic_profile("1x512x512", "1x256x256", "1x768x768")
    if GPU is None:
        with pytest.raises(UserInputError, match="no usable GPU.*--compute-capability"):
            build(folder, "tensorrt-rtx")


@pytest.mark.skipif(GPU is not None, reason="this machine has a GPU")
def test_running_engines_without_a_gpu_says_so(folder):
    with pytest.raises(BackendError, match="needs an NVIDIA GPU.*onnxruntime or openvino"):
        Pipeline.load(folder, backend="tensorrt-rtx")


def test_missing_flavour_says_what_to_install():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match=r"pip install 'sdrt\[tensorrt\]'"):
            load_flavour("tensorrt")
    else:
        pytest.skip("NVIDIA TensorRT is installed here")


def test_cli_build_and_info(folder, capsys):
    assert main(["build", str(folder), "--static", "64x64", "--compute-capability", TARGETS]) == 0
    out = capsys.readouterr().out
    assert out.count("(cache hit)") == 4
    assert main(["info", str(folder)]) == 0
    assert "engine unet" in capsys.readouterr().out
    assert main(["build", str(folder), "--min", "1x64x64", "--compute-capability", TARGETS]) == 2
    assert "needs all of --min, --opt and --max" in capsys.readouterr().err


# -- on a GPU ----------------------------------------------------------------------------------------------

RTX_GPU = GPU is not None and GPU[1] in supported_targets(load_flavour("tensorrt-rtx"))
gpu = pytest.mark.skipif(not RTX_GPU, reason="needs an NVIDIA GPU that TensorRT for RTX targets (Turing to Blackwell RTX)")


@pytest.mark.gpu
@gpu
def test_every_engine_matches_onnxruntime(folder):
    from sdrt.runtime.backends import create_backend

    build(folder, "tensorrt-rtx", [static_profile(64, 64)])
    manifest = load_manifest(folder)
    ort = create_backend("onnxruntime").load(folder, manifest)
    with create_backend("tensorrt-rtx").load(folder, manifest) as engines:
        rng = np.random.default_rng(0)
        feeds = {
            "text_encoder": {"input_ids": rng.integers(0, 49408, (2, 77)).astype(np.int32)},
            "unet": {"sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
                     "timestep": np.array([500.0, 500.0], np.float32),
                     "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32)},
            "vae_decoder": {"latent": rng.standard_normal((1, 4, 8, 8), dtype=np.float32)},
            "vae_encoder": {"image": rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)},
        }
        for component, feed in feeds.items():
            want, got = ort.run(component, feed), engines.run(component, feed)
            for name in want:
                rel = np.abs(got[name].astype(np.float32) - want[name]).max() / np.abs(want[name]).max()
                assert rel < 2e-2, f"{component}.{name}: {rel:.1e} (fp16 tolerance)"


@pytest.mark.gpu
@gpu
def test_images_match_onnxruntime_and_cuda_graphs_change_nothing(folder):
    from sdrt.benchmarks.metrics import psnr

    kwargs = dict(prompt="a red circle", num_inference_steps=6, height=64, width=64, seed=5)
    with Pipeline.load(folder) as ort:
        want = ort(**kwargs)
    with Pipeline.load(folder, backend="tensorrt-rtx") as engines:
        got = engines(**kwargs)
        again = engines(**kwargs)
    assert psnr(np.asarray(got.images[0]), np.asarray(want.images[0])) > 30
    np.testing.assert_array_equal(np.asarray(got.images[0]), np.asarray(again.images[0]))


def test_auto_and_backend_specs(folder):
    from sdrt.runtime.backends import create_backend, resolve_auto

    name, reason = resolve_auto(load_manifest(folder))
    if GPU is None:
        assert name in ("openvino", "onnxruntime") and reason.startswith("no usable GPU")
    assert create_backend("tensorrt-rtx:auto-build").auto_build is True
    with pytest.raises(UserInputError, match="TensorRT takes ':auto-build'"):
        create_backend("tensorrt-rtx:bf16")
