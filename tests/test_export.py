"""Export: every graph matches PyTorch; the folder carries what the runtime needs; failures lose nothing."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sdrt.errors import ExportError, ModelSourceError
from sdrt.export import export, memory, onnx_io
from sdrt.export.validate import TOLERANCE
from sdrt.lora.factors import FactorMaker
from sdrt.manifest import load_manifest
from sdrt.runtime.control import zero_residuals

COMPONENTS = {"text_encoder", "unet", "vae_decoder", "vae_encoder"}


@pytest.mark.parametrize("model,fp16", [("tiny", False), ("tiny-sd2", False), ("tiny", True)])
def test_graphs_match_pytorch(export_dir, model, fp16):
    folder = export_dir(model, fp16)
    checks = json.loads((folder / "validation.json").read_text())
    tolerance = TOLERANCE["fp16" if fp16 else "fp32"]  # fp32: 1e-4, fp16: 1e-2 relative error
    assert {c["component"] for c in checks} == COMPONENTS
    for name in COMPONENTS:  # two shapes per graph, neither the traced one
        assert len({c["shape"] for c in checks if c["component"] == name}) == 2
    for c in checks:
        assert c["finite"] and c["relative_error"] < tolerance, c


def test_manifest_describes_the_export(export_dir):
    m = load_manifest(export_dir("tiny-sd2"))
    assert m.family == "sd2" and m.prediction_type == "v_prediction" and m.precision == "fp32"
    assert set(m.components) == COMPONENTS
    unet = m.components["unet"]
    own = [t.name for t in unet.inputs if not t.name.endswith((".lora_down", ".lora_up"))]
    residuals = [f"down_block_residual_{i}" for i in range(6)] + ["mid_block_residual"]  # ControlNet's, zeros without
    assert own == ["sample", "timestep", "encoder_hidden_states"] + residuals
    # every Linear and Conv2d has a LoRA site: factors [in, rank] / [rank, out], or tap by tap for a convolution
    q = unet.input("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_down")
    assert q.shape[1] == "rank" and unet.input("conv_in.lora_down").shape == (3, 3, "rank", 4)
    assert len(unet.inputs) - len(own) == 2 * len({t.name.rsplit(".", 1)[0] for t in unet.inputs} - set(own))
    assert unet.input("sample").shape == ("2B", 4, "h", "w")
    assert m.components["text_encoder"].input("input_ids").dtype == "int32"
    assert m.tokenizers["tokenizer"].pad_token_id == 0  # SD 2.x pads with "!"
    assert m.scheduler_config["_class_name"] == "DDIMScheduler"
    assert m.vae_scale_factor == 8 and m.size_range == (64, 512) and len(m.model_hash) == 10
    assert load_manifest(export_dir("tiny")).family == "sd1"


def test_fp16_graphs_hold_fp16_weights(export_dir):
    model = onnx.load(str(export_dir("tiny", fp16=True) / "unet.onnx"))
    dtypes = {init.data_type for init in model.graph.initializer if len(init.dims) >= 2}
    assert dtypes == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # IO stays fp32


def test_dynamic_shapes_run_at_other_sizes(export_dir):
    folder = export_dir("tiny")
    unet = ort.InferenceSession(str(folder / "unet.onnx"), providers=["CPUExecutionProvider"])
    manifest = load_manifest(folder)
    no_lora = FactorMaker(manifest).feeds(())["unet"]
    for b, h, w, t in [(2, 8, 8, 77), (6, 9, 13, 154), (1, 64, 40, 77)]:  # odd latents, two prompt chunks
        out = unet.run(None, {
            **no_lora,
            **zero_residuals(manifest.components["unet"], b, h, w),  # each level ⌈h/2^k⌉, odd sides too
            "sample": np.zeros((b, 4, h, w), np.float32),
            "timestep": np.full(b, 500, np.float32),
            "encoder_hidden_states": np.zeros((b, t, 32), np.float32),
        })[0]
        assert out.shape == (b, 4, h, w)


def test_large_graphs_use_one_external_data_file(tmp_path, monkeypatch):
    from sdrt.export.builtin import build_random_pipeline
    from sdrt.export.graphs import Shape, component_graphs
    from sdrt.families import FAMILIES

    graph = component_graphs(build_random_pipeline("tiny"), FAMILIES["sd1"])[1]  # vae_decoder
    (tmp_path / "trace").mkdir()
    traced = onnx_io.trace_to_onnx(graph, Shape(1, 9, 11), tmp_path / "trace")
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 1000)  # pretend it is over 2 GB
    (tmp_path / "out").mkdir()
    file, data, _ = onnx_io.convert(traced, tmp_path / "out", "vae_decoder", "fp16")
    tmp_path = tmp_path / "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae_decoder.onnx", "vae_decoder.onnx.data"]
    session = ort.InferenceSession(str(tmp_path / file), providers=["CPUExecutionProvider"])
    assert session.run(None, {"latent": np.zeros((1, 4, 8, 8), np.float32)})[0].shape == (1, 3, 64, 64)


def test_failed_validation_leaves_output_untouched(tmp_path, monkeypatch):
    import sdrt.export.validate as validate

    monkeypatch.setitem(validate.TOLERANCE, "fp32", 0.0)  # nothing can pass
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="past tolerance"):
        export("tiny", out, lora=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["model.ckpt", "model.bin", "model.pt"])
def test_pickle_checkpoints_are_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not really a pickle")
    with pytest.raises(ModelSourceError, match="--allow-pickle"):
        export(str(path), tmp_path / "out")


def test_bad_sources_and_outputs(tmp_path):
    with pytest.raises(ModelSourceError, match="built-in"):
        export(str(tmp_path / "nope"), tmp_path / "out")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelSourceError, match="model_index.json"):
        export(str(tmp_path / "folder"), tmp_path / "out")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "precious.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        export("tiny", busy)
    assert (busy / "precious.txt").read_text() == "keep me"


def test_diffusers_folder_round_trip(tmp_path, reference_pipeline, export_dir):
    reference_pipeline("tiny").save_pretrained(tmp_path / "diffusers")
    # (the graphs are the built-in's, checked above: neither validated nor given LoRA inputs here)
    m = export(str(tmp_path / "diffusers"), tmp_path / "out", validate=False, lora=False)
    assert m.source["kind"] == "diffusers" and m.family == "sd1"
    # the folder's files are hashed, so an fp16 export (weights loaded in fp16) names the same model
    half = export(str(tmp_path / "diffusers"), tmp_path / "out16", fp16=True, validate=False, lora=False)
    assert half.model_hash == m.model_hash and len(m.model_hash) == 10


def test_parameter_counts_come_from_configs_and_headers(tmp_path, reference_pipeline):
    pipe = reference_pipeline("tiny-sdxl")
    built = {n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in ("unet", "vae", "text_encoder", "text_encoder_2")}
    assert memory.parameter_counts("tiny-sdxl") == built  # made on the meta device, nothing allocated
    pipe.save_pretrained(tmp_path / "diffusers")
    assert memory.parameter_counts(str(tmp_path / "diffusers")) == built  # from the safetensors headers
    assert memory.parameter_counts(str(tmp_path / "nope")) is None


def test_an_export_that_cannot_fit_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 2_000_000_000)
    with pytest.raises(ExportError, match=r"needs about 13\.\d GB of memory .* Close other programs"):
        export("sdxl-arch", tmp_path / "out", fp16=True)
    assert list(tmp_path.iterdir()) == []
    counts = memory.parameter_counts("sdxl-arch")
    monkeypatch.setattr(memory, "available_bytes", lambda: memory.estimate_peak(counts, True) + 1)
    with pytest.raises(ExportError, match=r"in fp32 needs .* Export with --fp16 \(about 13\.\d GB\)"):
        memory.check_fits("sdxl-arch", fp16=False)
    memory.check_fits("sdxl-arch", fp16=True)  # fits: no error
