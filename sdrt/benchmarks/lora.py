"""``sdrt bench --lora``: what LoRAs cost on each backend, against the issue's targets. One export with LoRA sites and
one without (``--no-lora``), random rank-``rank`` LoRAs on every attention and feed-forward layer of the U-Net, and
per backend, interleaved: a request on the graphs without sites, one with sites and no LoRA, one with a LoRA; then
requests alternating between two LoRAs against repeats of the same one (the cost of switching), and the peak memory
of a fresh process with and without a LoRA.

``python -m sdrt.benchmarks.lora FOLDER BACKEND SIZE [LORA_FILE]``: that fresh process (prints one JSON line)."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..lora.factors import FactorMaker
from ..lora.sites import export_sites
from ..manifest import load_manifest
from .bench import AddonBenchOptions
from .stats import interleaved

# kohya's usual targets: the attention projections and the feed-forward layers
TARGETS = re.compile(r"attn\d\.(to_q|to_k|to_v|to_out\.0)$|ff\.net\.(0\.proj|2)$")
PROMPT = "a red circle on a blue background"


@dataclass(frozen=True)
class LoraBenchOptions(AddonBenchOptions):
    steps: int = 20  # the targets are per 20-step image
    rank: int = 32


def random_lora(folder: Path, path: Path, rank: int, seed: int) -> int:
    """Write a kohya LoRA of ``rank`` on every attention and feed-forward layer of the export's U-Net; the number
    of layers it changes."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    state = {}
    for site_path, site in export_sites(load_manifest(folder))["unet"].items():
        if not TARGETS.search(site_path):
            continue
        out, inner = site.weight_shape[:2]
        key = "lora_unet_" + site_path.replace(".", "_")
        state[f"{key}.lora_down.weight"] = (rng.standard_normal((rank, inner)) / inner ** 0.5).astype(np.float32)
        state[f"{key}.lora_up.weight"] = (rng.standard_normal((out, rank)) * 0.1).astype(np.float32)
        state[f"{key}.alpha"] = np.array(rank / 2, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return len(state) // 3


def bench_lora(opts: LoraBenchOptions, log: Callable = print, done: Callable[[dict], None] = lambda report: None
               ) -> dict:
    """The report; ``done`` is called with it after each backend (a long run keeps what it measured)."""
    with_sites, without = opts.export(log, lora=True), opts.export(log)
    loras = opts.work_dir / "loras"
    layers = [random_lora(with_sites, loras / f"{name}.safetensors", opts.rank, seed) for seed, name in enumerate("ab")]
    report = opts.report() | {"lora_layers": layers[0], "backends": {}}
    for backend in opts.backends:
        log(f"{backend}: requests without sites, with sites, with a LoRA; switching")
        timings = _timings(backend, without, with_sites, loras, opts)
        log(f"{backend}: peak memory of a fresh process, with and without a LoRA")
        memory = {label: _probe(with_sites, backend, opts.size, lora) for label, lora in
                  (("no LoRA", None), ("LoRA", loras / "a.safetensors"))}
        report["backends"][backend] = timings | {"peak_rss_mib": memory}
        done(report)
    return report


def _timings(backend: str, without: Path, with_sites: Path, loras: Path, opts: LoraBenchOptions) -> dict:
    from ..runtime import Pipeline

    kw = dict(num_inference_steps=opts.steps, height=opts.size, width=opts.size, seed=0, scheduler=opts.sampler)
    with Pipeline.load(without, backend) as plain, Pipeline.load(with_sites, backend, lora_dir=loras) as pipe:
        def request(p, loras=None):
            def run():
                started = time.perf_counter()
                p(PROMPT, loras=loras, **kw)
                return {"seconds": time.perf_counter() - started}
            return run

        stats = interleaved({"without sites": request(plain), "sites, no LoRA": request(pipe),
                             "LoRA a": request(pipe, {"a": 1.0})}, opts.warmup, opts.repeats)
        switched, same = [], []
        for _ in range(opts.repeats):  # a, a, b, b, …: every other request follows a switch
            for name in "ba":
                switched.append(request(pipe, {name: 1.0})()["seconds"])
                same.append(request(pipe, {name: 1.0})()["seconds"])
        fresh = FactorMaker(pipe.manifest)  # factors made from nothing: what a switch computes
        started = time.perf_counter()
        fresh.feeds(pipe.loras.choose([], {"b": 1.0}))
        factors = time.perf_counter() - started
    medians = {name: s["seconds"].median for name, s in stats.items()}
    return {
        "seconds": {name: s["seconds"].to_json() for name, s in stats.items()},
        "no_lora_vs_without_sites": medians["sites, no LoRA"] / medians["without sites"],
        "lora_vs_no_lora": medians["LoRA a"] / medians["sites, no LoRA"],
        "switch_seconds": statistics.median(switched) - statistics.median(same),
        "switched_request_seconds": statistics.median(switched),
        "same_request_seconds": statistics.median(same),
        "factor_seconds": factors,
    }


def _probe(folder: Path, backend: str, size: int, lora: Path | None) -> float | str:
    cmd = [sys.executable, "-m", "sdrt.benchmarks.lora", str(folder), backend, str(size)] + ([str(lora)] if lora else [])
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        return f"error: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}"
    return json.loads(run.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def text(report: dict) -> str:
    """The report as a Markdown table with the issue's targets."""
    o = report["options"]
    lines = [f"LoRA costs: {o['model']}, {o['size']}x{o['size']}, {o['steps']} steps ({o['sampler']}), rank-{o['rank']} "
             f"LoRAs on {report['lora_layers']} attention and feed-forward layers; {report['machine'].get('cpu', '')}",
             "", "| backend | image without sites | sites, no LoRA (target ≤ 1.02×) | with a LoRA | switching A↔B "
             "(target ≤ 15 % of a 20-step image) | peak memory no LoRA / LoRA (target ≤ 1.2×) |",
             "|---|---|---|---|---|---|"]
    for backend, r in report["backends"].items():
        s, mem = r["seconds"], r["peak_rss_mib"]
        image = s["sites, no LoRA"]["median"]
        twenty_steps = image * 20 / o["steps"]
        ratio = f"{mem['LoRA'] / mem['no LoRA']:.2f}×" if all(isinstance(v, float) for v in mem.values()) else "?"
        lines.append(
            f"| {backend} | {s['without sites']['median']:.2f} s | {image:.2f} s ({r['no_lora_vs_without_sites']:.3f}×) "
            f"| {s['LoRA a']['median']:.2f} s ({r['lora_vs_no_lora']:.3f}×) | {r['switch_seconds']:+.2f} s "
            f"({100 * r['switch_seconds'] / twenty_steps:+.1f} %; factors {1000 * r['factor_seconds']:.0f} ms) "
            f"| {_mib(mem['no LoRA'])} / {_mib(mem['LoRA'])} ({ratio}) |")
    return "\n".join(lines)


def _mib(value) -> str:
    return f"{value / 1024:.2f} GB" if isinstance(value, float) else str(value)


def _peak(folder: str, backend: str, size: int, lora: str | None) -> dict:
    from ..runtime import Pipeline
    from .probe import peak_rss_mib

    with Pipeline.load(folder, backend) as pipe:
        pipe(PROMPT, num_inference_steps=2, height=size, width=size, seed=0, loras={lora: 1.0} if lora else None)
    return {"peak_rss_mib": peak_rss_mib()}


OPTIONS, BENCH = LoraBenchOptions, bench_lora  # what `sdrt bench --lora` runs


if __name__ == "__main__":
    print(json.dumps(_peak(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)))
