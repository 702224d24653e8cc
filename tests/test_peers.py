"""`sdrt bench --peers`: the CPU peers installed for real from the package registries into their own environments,
fed the same weights through their own converters, run beside sdrt's backends, compared in `summary.vs_best_peer`.
stable-diffusion.cpp is left out here: it builds from source for minutes and reads SD's real layer sizes only
(`benchmarks/results/peers` has its rows on the SD 1.5 architecture)."""

import json

import pytest

from sdrt.benchmarks.bench import BenchOptions, run_bench
from sdrt.benchmarks.peers import PEERS, Peer, expand_peers, parse_peer
from sdrt.benchmarks.peers.summary import vs_best_peer
from sdrt.benchmarks.report import write_report
from sdrt.errors import UserInputError


def test_peer_rows_read_like_backends():
    assert parse_peer("optimum-intel:bf16:static").name == "optimum-intel:bf16:static"
    assert parse_peer("sdcpp").precision == "fp32"
    # a bare name: the peer once per precision class the sdrt backends compute in
    assert [c.name for c in expand_peers(("openvino-genai", "sdcpp:bf16"), {"fp32", "bf16"})] == [
        "openvino-genai", "openvino-genai:bf16", "sdcpp:bf16"]
    with pytest.raises(UserInputError, match="unknown peer 'comfyui'; known: optimum-intel"):
        parse_peer("comfyui")
    with pytest.raises(UserInputError, match="options are bf16 or fp32, got static"):
        parse_peer("sdcpp:static")  # stable-diffusion.cpp has no static-shape mode


def _config(**totals_and_steps):
    return {"height": 256, "width": 256, "batch": 1, "backends": {
        name: {"timings": {"total": {"median": total}, "unet_step": {"median": step}}}
        for name, (total, step) in totals_and_steps.items()}}


def test_vs_best_peer_compares_like_precision_and_keeps_the_worst_size():
    precision = lambda name: "bf16" if "bf16" in name else "fp32"  # noqa: E731
    small = _config(**{"torch": (9, 0.9), "openvino:bf16": (2.0, 0.2), "onnxruntime": (4.0, 0.4),
                       "optimum-intel:bf16": (3.0, 0.25), "sdcpp": (1.0, 0.1)})  # sdcpp fp32: not like for like
    large = _config(**{"openvino:bf16": (8.0, 0.8), "optimum-intel:bf16": (8.8, 1.0)})
    large["height"] = large["width"] = 512
    models = [{"configs": [small, large]}]
    summary = vs_best_peer(models, {"optimum-intel:bf16", "sdcpp", "openvino-genai"}, {"openvino-genai"}, precision)
    assert [(c["sdrt"], c["peer"], c["precision_class"]) for c in summary["by_config"]] == [
        ("openvino:bf16", "optimum-intel:bf16", "bf16")] * 2
    assert summary["by_config"][0]["end_to_end"] == pytest.approx(1.5)
    assert summary["by_config"][0]["unet_step"] == pytest.approx(1.25)
    assert summary["end_to_end"] == pytest.approx(1.1) and summary["unet_step"] == pytest.approx(1.25)
    assert not summary["met"] and summary["target"] == 1.2
    assert summary["peers_run"] == ["optimum-intel:bf16", "sdcpp"] and summary["peers_not_run"] == ["openvino-genai"]


@pytest.mark.slow  # ~2 minutes of installing optimum-intel and OpenVINO GenAI: make test-slow
def test_bench_runs_the_peers_beside_sdrt(export_dir, tmp_path, monkeypatch):
    """optimum-intel and OpenVINO GenAI installed for real, on tiny's weights converted by optimum-cli, in fp32: from
    the benchmark's starting latents both must give diffusers' image (so the comparison is like for like); a peer
    whose requirements cannot be installed is a row saying so, and the run goes on."""
    monkeypatch.setitem(PEERS, "unobtainable", Peer("unobtainable", ("sdrt-no-such-package==0.0.1",), "single-file",
                                                    takes_noise=False, static=False, samplers={"euler": "euler"},
                                                    about="a peer whose package does not exist"))
    opts = BenchOptions(models=(str(export_dir("tiny")),), backends=("torch", "openvino"), sizes=(64,), steps=3,
                        sampler="euler", warmup=0, repeats=1, peak_sizes=(256,), probes=False,
                        peers=("optimum-intel", "openvino-genai:static", "unobtainable"), work_dir=tmp_path / "work")
    report, images = run_bench(opts, log=print)
    config = report["models"][0]["configs"][0]
    for name in ("optimum-intel", "openvino-genai:static"):
        peer = config["backends"][name]
        assert peer["parity"]["passed"] and peer["parity"]["psnr_db"] > 40, (name, peer["parity"])
        assert peer["timings"]["unet_step"]["median"] > 0 and peer["first_image"]["peak_rss_mib"] > 100
    assert config["backends"]["optimum-intel"]["parity"]["latents_rel_error"] < 1e-3  # optimum-intel hands them back
    assert "installing unobtainable failed" in config["not_run"]["unobtainable"]
    summary = report["summary"]["vs_best_peer"]
    assert summary["sdrt"] == "openvino" and summary["peers_run"] == ["openvino-genai:static", "optimum-intel"]
    assert summary["end_to_end"] > 0 and summary["peers_not_run"] == ["unobtainable"]
    text = write_report(report, images, tmp_path / "report").read_text()
    assert "| optimum-intel (peer) | CPU (fp32) |" in text and "## Against the peers" in text
    assert json.loads((tmp_path / "report" / "report.json").read_text())["summary"]["vs_best_peer"]["target"] == 1.2
