"""``sdrt bench --preview``: what live previews cost a denoising step on each backend. Per backend, interleaved:
requests without previews and with a preview wanted at every step (``sdrt serve --preview-every 1`` with a client
watching), previews decoded by the full VAE and by the tiny one (a random AutoencoderTiny is added to the export
when it has none); the step time, how many previews were made, and what one decode costs against a step (which is
why previews are rationed by time rather than made at a fixed rate). The target: previews cost at most 5 % of a
step."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..components import TINY_VAE_DECODER, VAE_DECODER
from ..manifest import load_manifest
from .bench import AddonBenchOptions
from .stats import interleaved

PROMPT = "a red circle on a white background"
DECODERS = {"VAE": VAE_DECODER.name, "tiny VAE": TINY_VAE_DECODER.name}  # what decodes the previews


@dataclass(frozen=True)
class PreviewBenchOptions(AddonBenchOptions):
    steps: int = 20


def bench_preview(opts: PreviewBenchOptions, log: Callable = print,
                  done: Callable[[dict], None] = lambda report: None) -> dict:
    """The report; ``done`` is called with it after each backend."""
    folder = opts.export(log)
    if TINY_VAE_DECODER.name not in load_manifest(folder).components:
        log(f"adding a random tiny VAE decoder to {folder}")
        run = subprocess.run([sys.executable, "-m", "sdrt.cli", "add-tiny-vae", str(folder), "random"],
                             capture_output=True, text=True)  # a child process: torch stays out of the benchmark
        if run.returncode != 0:
            raise RuntimeError(f"adding the tiny VAE failed: {run.stderr.strip()[-2000:]}")
    report = opts.report() | {"backends": {}}
    for backend in opts.backends:
        log(f"{backend}: requests without and with live previews")
        report["backends"][backend] = _timings(folder, backend, opts)
        done(report)
    return report


def _timings(folder: Path, backend: str, opts: PreviewBenchOptions) -> dict:
    from ..runtime import Pipeline
    from ..runtime.preview import Preview

    kw = dict(num_inference_steps=opts.steps, height=opts.size, width=opts.size, seed=0, scheduler=opts.sampler)
    with Pipeline.load(folder, backend) as pipe:
        def request(decoder: str | None):
            shown: list = []
            preview = Preview(lambda step, images: shown.append(step), every=1) if decoder else None

            def run():
                shown.clear()
                pipe.preview_decoder = decoder or VAE_DECODER.name
                result = pipe(PROMPT, **kw, preview=preview)
                return {"step": result.timings["denoise"] / opts.steps, "previews": float(len(shown))}
            return run

        runs = {"no preview": request(None), **{label: request(name) for label, name in DECODERS.items()}}
        stats = interleaved(runs, opts.warmup, opts.repeats)
        decode = {label: _decode_seconds(pipe, name, opts) for label, name in DECODERS.items()}
    plain = stats["no preview"]["step"].median
    return {
        "seconds": {label: {k: s.to_json() for k, s in values.items()} for label, values in stats.items()},
        "decoders": {label: {"step_with_vs_without": stats[label]["step"].median / plain,
                             "previews_per_image": stats[label]["previews"].median,
                             "decode_seconds": decode[label],
                             "decode_vs_step": decode[label] / plain}  # a preview at every step would add this
                     for label in DECODERS},
    }


def _decode_seconds(pipe, decoder: str, opts: PreviewBenchOptions) -> float:
    """The median time of one decode of the request's latents (batch 1) by ``decoder``."""
    import numpy as np

    m = pipe.manifest
    feeds = {"latent": np.zeros((1, m.latent_channels, opts.size // m.vae_scale_factor,
                                 opts.size // m.vae_scale_factor), np.float32)}
    times = []
    for _ in range(1 + opts.repeats):
        t0 = time.perf_counter()
        pipe.backend.run(decoder, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def text(report: dict) -> str:
    """The report as a Markdown table."""
    o = report["options"]
    lines = [f"Live previews: {o['model']}, {o['size']}x{o['size']}, {o['steps']} steps ({o['sampler']}), guidance "
             f"(batch 2), a preview wanted at every step; {report['machine'].get('cpu', '')}", "",
             "| backend | previews by | step, no previews | step with previews | previews made per image | one "
             "decode (÷ step) |", "|---|---|---|---|---|---|"]
    for backend, r in report["backends"].items():
        s = r["seconds"]
        for label, d in r["decoders"].items():
            lines.append(f"| {backend} | {label} | {s['no preview']['step']['median']:.4f} s | "
                         f"{s[label]['step']['median']:.4f} s ({d['step_with_vs_without']:.3f}×) | "
                         f"{d['previews_per_image']:.0f} of {o['steps']} | {d['decode_seconds']:.4f} s "
                         f"({d['decode_vs_step']:.3f}×) |")
    return "\n".join(lines)


OPTIONS, BENCH = PreviewBenchOptions, bench_preview  # what `sdrt bench --preview` runs
