"""``sdrt bench --preview``: what live previews cost a denoising step on each backend. Per backend, interleaved:
requests without previews and with a preview wanted at every step (``sdrt serve --preview-every 1`` with a client
watching); the step time of both, how many previews were made, and what one preview's decode costs against a step
(which is why previews are rationed to 5 % of the loop's time rather than made at a fixed rate).
The target: previews cost at most 5 % of a step."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .bench import BenchOptions, prepare_export
from .machine import machine_info
from .stats import interleaved

PROMPT = "a red circle on a white background"


@dataclass(frozen=True)
class PreviewBenchOptions:
    model: str = "sd15-arch"
    backends: tuple[str, ...] = ("onnxruntime", "openvino")
    size: int = 256
    steps: int = 20
    warmup: int = 1
    repeats: int = 3
    sampler: str = "dpm++2m"
    work_dir: Path = Path("build/bench")


def bench_preview(opts: PreviewBenchOptions, log: Callable = print,
                  done: Callable[[dict], None] = lambda report: None) -> dict:
    """The report; ``done`` is called with it after each backend."""
    folder, _ = prepare_export(opts.model, BenchOptions(models=(opts.model,), work_dir=opts.work_dir), log, lora=False)
    report = {"machine": machine_info(), "options": {**asdict(opts), "work_dir": str(opts.work_dir)}, "backends": {}}
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
        def request(preview: Preview | None, shown: list):
            def run():
                shown.clear()
                result = pipe(PROMPT, **kw, preview=preview)
                return {"step": result.timings["denoise"] / opts.steps, "previews": float(len(shown))}
            return run

        shown: list = []
        rationed = Preview(lambda step, images: shown.append(step), every=1)
        stats = interleaved({"no preview": request(None, []), "previews": request(rationed, shown)}, opts.warmup,
                            opts.repeats)
        decode = _decode_seconds(pipe, opts)
    plain, previews = stats["no preview"]["step"].median, stats["previews"]["step"].median
    return {
        "seconds": {label: {k: s.to_json() for k, s in values.items()} for label, values in stats.items()},
        "step_with_vs_without": previews / plain,
        "previews_per_image": stats["previews"]["previews"].median,
        "decode_seconds": decode,
        "decode_vs_step": decode / plain,  # what a preview at every step would add to a step
    }


def _decode_seconds(pipe, opts: PreviewBenchOptions) -> float:
    """The median time of one preview decode of the request's latents (batch 1)."""
    import numpy as np

    m = pipe.manifest
    latents = np.zeros((1, m.latent_channels, opts.size // m.vae_scale_factor, opts.size // m.vae_scale_factor),
                       np.float32)
    times = []
    for _ in range(1 + opts.repeats):
        t0 = time.perf_counter()
        pipe._decode_preview(latents)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def text(report: dict) -> str:
    """The report as a Markdown table."""
    o = report["options"]
    lines = [f"Live previews: {o['model']}, {o['size']}x{o['size']}, {o['steps']} steps ({o['sampler']}), guidance "
             f"(batch 2), a preview wanted at every step; {report['machine'].get('cpu', '')}", "",
             "| backend | step, no previews | step with previews | previews made per image | one preview's decode "
             "(÷ step) |", "|---|---|---|---|---|"]
    for backend, r in report["backends"].items():
        s = r["seconds"]
        lines.append(f"| {backend} | {s['no preview']['step']['median']:.4f} s | {s['previews']['step']['median']:.4f} s "
                     f"({r['step_with_vs_without']:.3f}×) | {r['previews_per_image']:.0f} of {o['steps']} | "
                     f"{r['decode_seconds']:.4f} s ({r['decode_vs_step']:.2f}×) |")
    return "\n".join(lines)


OPTIONS, BENCH = PreviewBenchOptions, bench_preview  # what `sdrt bench --preview` runs
