"""``sdrt bench --controlnet``: what one ControlNet costs a denoising step on each backend. An export of the model
without LoRA sites, a random ControlNet of its architecture added to it (``controlnet.bench``), and per backend,
interleaved: requests without control (the U-Net fed zeros) and with the ControlNet, the step split into the U-Net's
and the ControlNet's time; the FLOPs of both graphs at the call's shapes; the peak memory of a fresh process with and
without control. The target: a step with one ControlNet costs the ControlNet's own compute and no more.

``python -m sdrt.benchmarks.controlnet add FOLDER``: adds the random ControlNet (a child process: torch stays out
of the benchmark); ``python -m sdrt.benchmarks.controlnet peak FOLDER BACKEND SIZE [control]``: one fresh request's
peak memory (prints one JSON line)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..components import UNET, ControlNet
from ..manifest import load_manifest
from .bench import AddonBenchOptions
from .flops import count_flops
from .stats import interleaved

NAME = "bench"
PROMPT = "a red circle on a blue background"


ControlNetBenchOptions = AddonBenchOptions


def control_image(size: int) -> Image.Image:
    """A map with some structure (rectangles), as an edge or depth map has."""
    pixels = np.zeros((size, size, 3), np.uint8)
    for i in range(4):
        a, b = size * i // 5, size * (i + 2) // 5
        pixels[a:b, size - b:size - a] = 255 - 40 * i
    return Image.fromarray(pixels)


def bench_controlnet(opts: ControlNetBenchOptions, log: Callable = print,
                     done: Callable[[dict], None] = lambda report: None) -> dict:
    """The report; ``done`` is called with it after each backend."""
    folder = opts.export(log)
    if ControlNet.PREFIX + NAME not in load_manifest(folder).components:
        log(f"adding a random ControlNet to {folder}")
        run = subprocess.run([sys.executable, "-m", "sdrt.benchmarks.controlnet", "add", str(folder)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"adding the benchmark's ControlNet failed: {run.stderr.strip()[-2000:]}")
    report = opts.report() | {"gflops_per_step": _flops(folder, opts.size), "backends": {}}
    for backend in opts.backends:
        log(f"{backend}: requests without and with the ControlNet; peak memory of fresh processes")
        report["backends"][backend] = _timings(folder, backend, opts) | {"peak_rss_mib": {
            label: _probe(folder, backend, opts.size, control) for label, control in (("no control", False),
                                                                                      ("ControlNet", True))}}
        done(report)
    return report


def _flops(folder: Path, size: int) -> dict[str, float]:
    """GFLOPs of one guided step (batch 2) of the U-Net and of the ControlNet at ``size``²."""
    from ..engines.profiles import component_shapes, static_profile

    manifest = load_manifest(folder)
    out = {}
    for name in (UNET.name, ControlNet.PREFIX + NAME):
        shapes = {k: v[2] for k, v in component_shapes(manifest, name, static_profile(size, size)).items()}
        out[name] = count_flops(folder / manifest.components[name].file, shapes).total / 1e9
    return out


def _timings(folder: Path, backend: str, opts: ControlNetBenchOptions) -> dict:
    from ..runtime import Pipeline

    kw = dict(num_inference_steps=opts.steps, height=opts.size, width=opts.size, seed=0, scheduler=opts.sampler)
    image = control_image(opts.size)
    with Pipeline.load(folder, backend) as pipe:
        def request(control: bool):
            def run():
                started = time.perf_counter()
                result = pipe(PROMPT, **kw, **({"control_image": image, "controlnet": NAME} if control else {}))
                net = result.timings.get("controlnet", 0.0)
                return {"seconds": time.perf_counter() - started, "step": result.timings["denoise"] / opts.steps,
                        "unet_step": (result.timings["denoise"] - net) / opts.steps, "controlnet_step": net / opts.steps}
            return run

        stats = interleaved({"no control": request(False), "ControlNet": request(True)}, opts.warmup, opts.repeats)
    m = {label: {k: s.median for k, s in values.items()} for label, values in stats.items()}
    plain, control = m["no control"], m["ControlNet"]
    return {
        "seconds": {label: {k: s.to_json() for k, s in values.items()} for label, values in stats.items()},
        # the step with control against the U-Net's step without it plus the ControlNet's own time: 1 = no more
        "step_vs_unet_plus_controlnet": control["step"] / (plain["step"] + control["controlnet_step"]),
        "step_with_vs_without": control["step"] / plain["step"],
        "unet_step_with_vs_without": control["unet_step"] / plain["unet_step"],
    }


def _probe(folder: Path, backend: str, size: int, control: bool) -> float | str:
    cmd = [sys.executable, "-m", "sdrt.benchmarks.controlnet", "peak", str(folder), backend, str(size)]
    run = subprocess.run(cmd + (["control"] if control else []), capture_output=True, text=True)
    if run.returncode != 0:
        return f"error: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}"
    return json.loads(run.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def text(report: dict) -> str:
    """The report as a Markdown table."""
    o, g = report["options"], report["gflops_per_step"]
    net = g[ControlNet.PREFIX + NAME]
    lines = [f"One ControlNet per step: {o['model']}, {o['size']}x{o['size']}, {o['steps']} steps ({o['sampler']}), "
             f"guidance (batch 2); U-Net {g[UNET.name]:.0f} GFLOP, ControlNet {net:.0f} GFLOP per step "
             f"({net / g[UNET.name]:.2f}×); {report['machine'].get('cpu', '')}", "",
             "| backend | step, no control | step with the ControlNet | of which U-Net / ControlNet | step ÷ (U-Net without "
             "+ ControlNet) | U-Net with ÷ without | peak memory no control / ControlNet |", "|---|---|---|---|---|---|---|"]
    for backend, r in report["backends"].items():
        s, mem = r["seconds"], r["peak_rss_mib"]
        plain, control = s["no control"], s["ControlNet"]
        ratio = f" ({mem['ControlNet'] / mem['no control']:.2f}×)" if all(isinstance(v, float) for v in mem.values()) else ""
        lines.append(
            f"| {backend} | {plain['step']['median']:.3f} s | {control['step']['median']:.3f} s "
            f"({r['step_with_vs_without']:.2f}×) | {control['unet_step']['median']:.3f} s / "
            f"{control['controlnet_step']['median']:.3f} s | {r['step_vs_unet_plus_controlnet']:.3f} | "
            f"{r['unet_step_with_vs_without']:.3f} | {_gb(mem['no control'])} / {_gb(mem['ControlNet'])}{ratio} |")
    return "\n".join(lines)


def _gb(value) -> str:
    return f"{value / 1024:.2f} GB" if isinstance(value, float) else str(value)


def _add(folder: str) -> None:
    from ..export.controlnet import add_to_export, random_controlnet

    manifest = load_manifest(folder)
    target = Path(folder) / f".{NAME}-controlnet"
    random_controlnet(manifest.unet_config, manifest.latent_channels, seed=0,
                      vae_scale=manifest.vae_scale_factor).save_pretrained(target)
    try:
        add_to_export(folder, [f"{NAME}={target}"], validate=False)
    finally:
        import shutil

        shutil.rmtree(target, ignore_errors=True)


def _peak(folder: str, backend: str, size: int, control: bool) -> dict:
    from ..runtime import Pipeline
    from .probe import peak_rss_mib

    with Pipeline.load(folder, backend) as pipe:
        extra = {"control_image": control_image(size), "controlnet": NAME} if control else {}
        pipe(PROMPT, num_inference_steps=2, height=size, width=size, seed=0, **extra)
    return {"peak_rss_mib": peak_rss_mib()}


OPTIONS, BENCH = ControlNetBenchOptions, bench_controlnet  # what `sdrt bench --controlnet` runs


if __name__ == "__main__":
    if sys.argv[1] == "add":
        _add(sys.argv[2])
    else:
        print(json.dumps(_peak(sys.argv[2], sys.argv[3], int(sys.argv[4]), len(sys.argv) > 5)))
