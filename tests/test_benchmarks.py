"""The benchmark harness: FLOP counts against PyTorch's counter, the statistics, the parity metrics, and a whole
run on `tiny` that writes a report. Speed is measured by `make bench`, never asserted here."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from sdrt.benchmarks import metrics
from sdrt.benchmarks.bench import BenchOptions, run_bench
from sdrt.benchmarks.flops import count_flops
from sdrt.benchmarks.report import write_report
from sdrt.benchmarks.stats import Stats, interleaved
from sdrt.manifest import load_manifest


def test_flops_of_a_small_graph(tmp_path):
    """Conv 3→8, 3×3 on 1×3×16×16 (pad 1) then MatMul by a 16×4 weight and a MatMul of two activations."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], np.zeros(8 * 27, np.float32))
    m = helper.make_tensor("m", TensorProto.FLOAT, [16, 4], np.zeros(64, np.float32))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("MatMul", ["c", "m"], ["y"]),  # [1, 8, 16, 4]
        helper.make_node("MatMul", ["y", "z"], ["out"]),  # [1, 8, 16, 4] @ [1, 8, 4, 5]
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, "H", "W"]),
                                           helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 8, 4, 5])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [w, m])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    flops = count_flops(path, {"x": (1, 3, 16, 16), "z": (1, 8, 4, 5)})
    assert flops.conv == 2 * (8 * 16 * 16) * (3 * 9)
    assert flops.linear == 2 * (8 * 16 * 4) * 16
    assert flops.attention == 2 * (8 * 16 * 5) * 4


def test_unet_flops_equal_pytorch_counter(export_dir, reference_pipeline):
    """Convolutions and linear layers counted from the ONNX graph equal torch.utils.flop_counter's count of the
    diffusers U-Net (which leaves out attention's matmuls inside SDPA; those are counted apart here)."""
    from torch.utils.flop_counter import FlopCounterMode

    folder = export_dir("tiny")
    unet = reference_pipeline("tiny").unet
    x, t, h = torch.randn(2, 4, 8, 12), torch.tensor([10.0, 10.0]), torch.randn(2, 77, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, t, h)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    ours = count_flops(folder / load_manifest(folder).components["unet"].file,
                       {"sample": tuple(x.shape), "timestep": (2,), "encoder_hidden_states": tuple(h.shape)})
    assert ours.conv == counts["aten.convolution"]
    assert ours.linear == counts.get("aten.addmm", 0) + counts.get("aten.mm", 0)
    assert ours.attention > 0


def test_stats_and_interleaving():
    assert Stats.of([3.0, 1.0, 2.0]) == Stats(2.0, 1.0, 3.0, 3)
    calls = []

    def run(name):
        def f():
            calls.append(name)
            return {"total": float(len(calls))}
        return f

    stats = interleaved({"a": run("a"), "b": run("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4  # one warm-up round, then A B A B A B
    assert stats["a"]["total"] == Stats(5.0, 3.0, 7.0, 3) and stats["b"]["total"].n == 3


def test_parity_metrics():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255 - b[0, 0, 0]
    assert metrics.psnr(a, a) == float("inf") and metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.max_abs_pixel_diff(a, b) == abs(int(a[0, 0, 0]) - int(b[0, 0, 0]))
    assert 0 < metrics.ssim(a, b) < 1 and metrics.psnr(a, b) < 100
    assert metrics.relative_error(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == 0.5
    assert metrics.difference_map(a, b, 10)[0, 0] == min(255, 10 * metrics.max_abs_pixel_diff(a, b))


def test_bench_run_on_tiny_writes_a_report(export_dir, tmp_path):
    opts = BenchOptions(models=(str(export_dir("tiny")),), sizes=(64,), steps=3, warmup=0, repeats=2, peak_sizes=(256,),
                        quality=True, work_dir=tmp_path / "work")
    opts.work_dir.mkdir()
    for precision in ("fp32", "fp16"):  # the session's exports of shapes, where the benchmark looks for its own
        (opts.work_dir / f"shapes-{precision}").symlink_to(export_dir("shapes", fp16=precision == "fp16"))
    report, images = run_bench(opts, log=lambda msg: None)
    out = write_report(report, images, tmp_path / "report")
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    config = saved["models"][0]["configs"][0]
    torch_, ort = config["backends"]["torch"], config["backends"]["onnxruntime"]
    assert ort["parity"]["passed"] and ort["parity"]["psnr_db"] > 40
    assert ort["speedup_total"] > 0 and torch_["speedup_total"] == pytest.approx(1.0)
    assert config["flops_per_unet_step"]["total"] > 0 and saved["peak"]["peak_fp32"] > 0
    for b in (torch_, ort):
        assert b["first_image"]["peak_rss_mib"] > 0 and b["first_image"]["time_to_first_image_s"] > 0
        assert b["timings"]["unet_step"]["n"] == 2
    assert saved["machine"]["cores"] >= 1 and "onnxruntime" in saved["machine"]["versions"]
    rows = {(r["backend"], r["precision"]): r for r in saved["quality"]["rows"]}
    assert set(rows) == {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16")}
    assert rows[("torch", "fp32")]["adherence"] == rows[("onnxruntime", "fp32")]["adherence"] >= 8  # shipped: 8/9
    assert rows[("onnxruntime", "fp16")]["psnr_db_vs_fp32"] > 25 and rows[("onnxruntime", "fp16")]["adherence"] >= 8
    text = out.read_text()
    assert "| onnxruntime | CPUExecutionProvider |" in text and "| pass |" in text
    for name in ("latency", "images"):
        assert (tmp_path / "report" / f"export-64x64-b1-{name}.png").stat().st_size > 1000


def test_bench_cli_refuses_unknown_backend(tmp_path):
    run = subprocess.run([sys.executable, "-m", "sdrt.cli", "bench", "--backends", "torch,fastest", "--out",
                          str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 2 and "unknown backend(s) fastest" in run.stderr and "Traceback" not in run.stderr


def test_bench_one_backend_at_a_time_keeps_parity(export_dir, tmp_path):
    # for models two backends cannot hold at once: each loaded, run and closed before the next
    # and OpenVINO's rows say which kernels its U-Net ran on, as the peak's do
    opts = BenchOptions(models=(str(export_dir("tiny-sdxl")),), backends=("torch", "onnxruntime", "openvino"),
                        sizes=(64,), steps=2, warmup=0, repeats=1, peak_sizes=(256,), probes=False, one_at_a_time=True,
                        work_dir=tmp_path / "work")
    report, images = run_bench(opts, log=lambda msg: None)
    backends = report["models"][0]["configs"][0]["backends"]
    for name in ("onnxruntime", "openvino"):
        assert backends[name]["parity"]["passed"] and backends[name]["parity"]["psnr_db"] > 40
    assert report["options"]["one_at_a_time"] and "unet_kernels" not in backends["onnxruntime"]
    kernels = backends["openvino"]["unet_kernels"]
    assert sum(kernels.values()) >= 20 and all(k.endswith("_f32") for k in kernels)
    assert report["peak"]["kernels_fp32"]  # OpenVINO's fp32 GEMM (and bf16, int8 where the CPU has them)
    text = write_report(report, images, tmp_path / "report").read_text()
    assert "one after the other" in text and f"- openvino: {next(iter(kernels))} ×" in text
    assert "OpenVINO ran the peak's products on fp32: " in text


def test_controlnet_bench_splits_the_step_and_counts_both_graphs(export_dir, tmp_path):
    """sdrt bench --controlnet on a copy of tiny (without LoRA sites): a random ControlNet of its architecture is
    added, the step is split into U-Net and ControlNet time, both graphs' FLOPs are counted, fresh processes measure
    the peak memory with and without control."""
    import shutil

    from sdrt.benchmarks.controlnet import ControlNetBenchOptions, bench_controlnet, text

    folder = tmp_path / "tiny"
    shutil.copytree(export_dir("tiny", lora=False), folder)
    opts = ControlNetBenchOptions(model=str(folder), backends=("onnxruntime",), size=64, steps=2, warmup=0, repeats=1,
                                  work_dir=tmp_path / "work")
    report = bench_controlnet(opts, log=lambda msg: None)
    flops = report["gflops_per_step"]
    assert flops["controlnet.bench"] > 0 and flops["unet"] > 0
    ort = report["backends"]["onnxruntime"]
    assert ort["seconds"]["ControlNet"]["controlnet_step"]["median"] > 0
    assert ort["seconds"]["no control"]["controlnet_step"]["median"] == 0
    assert all(isinstance(v, float) and v > 0 for v in ort["peak_rss_mib"].values())
    assert "| onnxruntime |" in text(report)


def test_preview_bench_measures_both_decoders(export_dir, tmp_path):
    """sdrt bench --preview on a copy of tiny: a random tiny VAE is added, and requests with a preview wanted at every
    step (by the VAE and by the tiny VAE) are timed against requests without."""
    import shutil

    from sdrt.benchmarks.preview import PreviewBenchOptions, bench_preview, text

    folder = tmp_path / "tiny"
    shutil.copytree(export_dir("tiny", lora=False), folder)
    opts = PreviewBenchOptions(model=str(folder), backends=("onnxruntime",), size=64, steps=4, warmup=1, repeats=1,
                               work_dir=tmp_path / "work")
    report = bench_preview(opts, log=lambda msg: None)
    decoders = report["backends"]["onnxruntime"]["decoders"]
    assert set(decoders) == {"VAE", "tiny VAE"}
    assert all(d["decode_seconds"] > 0 and d["step_with_vs_without"] > 0 for d in decoders.values())
    assert "| onnxruntime | tiny VAE |" in text(report)


def test_a_backend_refused_for_memory_is_a_row_saying_why(export_dir, tmp_path, monkeypatch):
    """Free memory between what ONNX Runtime and OpenVINO need to load the export: the refused backend is reported,
    the other runs."""
    import sdrt.memory
    from sdrt.manifest import load_manifest

    folder = export_dir("tiny")
    graphs = sum(sdrt.memory.graph_bytes(folder, load_manifest(folder)).values())
    monkeypatch.setattr(sdrt.memory, "available_bytes", lambda: sdrt.memory.BASE_BYTES + graphs * 1.3)
    opts = BenchOptions(models=(str(folder),), backends=("onnxruntime", "openvino"), sizes=(64,), steps=1, warmup=0,
                        repeats=1, peak_sizes=(256,), probes=False, one_at_a_time=True, work_dir=tmp_path / "work")
    report, images = run_bench(opts, log=lambda msg: None)
    config = report["models"][0]["configs"][0]
    assert list(config["backends"]) == ["onnxruntime"] and "needs about" in config["not_run"]["openvino"]
    assert "| openvino | not run: loading" in write_report(report, images, tmp_path / "report").read_text()
