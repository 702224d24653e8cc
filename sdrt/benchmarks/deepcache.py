"""``sdrt bench --deepcache``: what reusing the U-Net's deep features (DeepCache, ``export/deepcache.py``) saves and
what it costs the images. The model is exported with ``--deepcache``; per backend, interleaved requests at each
interval (1: every step whole); the time of the denoising loop and of the whole request. Quality, on the first
backend from the same seeds: each interval's images against interval 1's (PSNR) and, on ``shapes``, the nine check
prompts read back (``sdrt.shapes``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import shapes
from ..components import UNET, UNET_SHALLOW
from ..engines.profiles import component_shapes, static_profile
from ..manifest import load_manifest
from .bench import AddonBenchOptions
from .flops import count_flops
from .metrics import psnr
from .stats import interleaved

PROMPTS = ("a red circle on a white background", "a photograph of an astronaut riding a horse",
           "a watercolour of a lighthouse at dawn")  # for models other than shapes: the images' drift alone


@dataclass(frozen=True)
class DeepCacheBenchOptions(AddonBenchOptions):
    intervals: tuple[int, ...] = (1, 2, 3, 5)
    guidance: float = 5.0


def bench_deepcache(opts: DeepCacheBenchOptions, log: Callable = print,
                    done: Callable[[dict], None] = lambda report: None) -> dict:
    """The report; ``done`` is called with it after each backend."""
    folder = opts.export(log, deep_cache=True)
    report = opts.report() | {"flops": _flops(folder, opts), "backends": {}}
    from ..runtime import Pipeline

    for i, backend in enumerate(opts.backends):
        with Pipeline.load(folder, backend) as pipe:
            log(f"{backend}: requests at DeepCache intervals {', '.join(map(str, opts.intervals))}")
            report["backends"][backend] = _timings(pipe, opts)
            if i == 0:
                log(f"{backend}: the images of each interval against interval 1's")
                report["quality"] = _quality(pipe, opts) | {"backend": backend}
        done(report)
    return report


def _flops(folder, opts: DeepCacheBenchOptions) -> dict:
    """FLOPs of one step of each graph (one image with guidance), and the shallow one's share of the whole."""
    manifest = load_manifest(folder)
    counts = {}
    for name in (UNET.name, UNET_SHALLOW.name):
        shapes = component_shapes(manifest, name, static_profile(opts.size, opts.size, 1))
        counts[name] = count_flops(folder / manifest.components[name].file,
                                   {k: shape[2] for k, shape in shapes.items()}).total  # [2]: the profile's max, 2B
    return counts | {"shallow_share": counts[UNET_SHALLOW.name] / counts[UNET.name]}


def _kwargs(opts: DeepCacheBenchOptions) -> dict:
    return dict(num_inference_steps=opts.steps, height=opts.size, width=opts.size, scheduler=opts.sampler,
                guidance_scale=opts.guidance)


def _timings(pipe, opts: DeepCacheBenchOptions) -> dict:
    def request(interval: int):
        def run():
            result = pipe(PROMPTS[0], **_kwargs(opts), seed=0, deepcache_interval=interval)
            return {"denoise": result.timings["denoise"], "total": sum(result.timings.values())}
        return run

    stats = interleaved({str(n): request(n) for n in opts.intervals}, opts.warmup, opts.repeats)
    whole = stats["1"]
    return {"seconds": {n: {k: s.to_json() for k, s in values.items()} for n, values in stats.items()},
            "speedup": {n: {k: whole[k].median / s.median for k, s in values.items()} for n, values in stats.items()}}


def _quality(pipe, opts: DeepCacheBenchOptions) -> dict:
    """Per interval: PSNR against interval 1 (worst, median) and, on shapes, the check prompts read right."""
    is_shapes = opts.model == "shapes"
    prompts = [shapes.caption(*t) for t in shapes.CHECKS] if is_shapes else list(PROMPTS)
    out = {}
    images = {n: [np.asarray(pipe(p, **_kwargs(opts), seed=1 + k, deepcache_interval=n).images[0])
                  for k, p in enumerate(prompts)] for n in opts.intervals}
    for n, drawn in images.items():
        scores = [psnr(a, b) for a, b in zip(drawn, images[1])]
        row = {"psnr_db_worst": min(scores), "psnr_db_median": float(np.median(scores))}
        if is_shapes:
            row["adherence"] = shapes.adherence(drawn, shapes.CHECKS)[0]
        out[str(n)] = row
    return {"prompts": len(prompts), "by_interval": out}


def text(report: dict) -> str:
    """The report as a Markdown table."""
    o, q = report["options"], report.get("quality", {})
    lines = [f"DeepCache: {o['model']}, {o['size']}x{o['size']}, {o['steps']} steps ({o['sampler']}), guidance "
             f"{o['guidance']:g}; {report['machine'].get('cpu', '')}. The shallow U-Net is "
             f"{report['flops']['shallow_share']:.0%} of the whole one's FLOPs "
             f"({report['flops'][UNET.name] / 1e9:.1f} GFLOP a step).", "",
             "| backend | interval | denoising loop | (× interval 1) | whole request | (×) | PSNR vs interval 1, "
             "worst / median | check prompts right |", "|---|---|---|---|---|---|---|---|"]
    for backend, r in report["backends"].items():
        for n, s in r["seconds"].items():
            quality = q.get("by_interval", {}).get(n, {}) if backend == q.get("backend") else {}
            psnrs = (f"{quality['psnr_db_worst']:.1f} / {quality['psnr_db_median']:.1f} dB"
                     if quality and n != "1" else "—")
            right = f"{quality['adherence']}/{q['prompts']}" if "adherence" in quality else "—"
            lines.append(f"| {backend} | {n} | {s['denoise']['median']:.3f} s | {r['speedup'][n]['denoise']:.2f}× | "
                         f"{s['total']['median']:.3f} s | {r['speedup'][n]['total']:.2f}× | {psnrs} | {right} |")
    return "\n".join(lines)


OPTIONS, BENCH = DeepCacheBenchOptions, bench_deepcache  # what `sdrt bench --deepcache` runs
