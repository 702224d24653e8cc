"""The benchmark run: export (or reuse) each model, run every backend on the same requests interleaved, and gather
latency, throughput, memory, FLOP rates and parity against the ``torch`` reference into one report dict."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable


from ..components import UNET
from ..engines.profiles import component_shapes, static_profile
from ..errors import SdrtError, UserInputError
from ..manifest import MANIFEST_NAME, load_manifest
from ..runtime.backends import KNOWN_BACKENDS
from ..runtime.noise import make_generator
from . import metrics
from .flops import count_flops
from .machine import machine_info
from .peak import measure_peak
from .runners import Output, Request, SdrtRunner, TorchRunner
from .stats import interleaved

REFERENCE = "torch"
# Parity each precision is held to against the fp32 torch reference (final latents; images).
TOLERANCES = {
    "fp32": {"latents_rel_error": 1e-3, "psnr_db": 40.0},
    "fp16": {"latents_rel_error": 5e-2, "psnr_db": 30.0},
    "bf16": {"latents_rel_error": 2e-1, "psnr_db": 25.0},  # 8 bits of mantissa: measured, see the README
    "int8": {"latents_rel_error": 2e-1, "psnr_db": 25.0},  # int8 weights (any compute precision): as bf16
}


@dataclass(frozen=True)
class BenchOptions:
    models: tuple[str, ...] = ("tiny",)
    backends: tuple[str, ...] = (REFERENCE, "onnxruntime")
    sizes: tuple[int, ...] = (256,)  # square image sides
    batches: tuple[int, ...] = (1,)
    steps: int = 10
    sampler: str = "dpm++2m"
    guidance: float = 7.5
    precision: str = "fp32"  # of the exported graphs; torch always runs fp32 on the CPU
    warmup: int = 1
    repeats: int = 3
    seed: int = 0
    prompt: str = "a red circle on a blue background"
    negative_prompt: str = "blurry"
    work_dir: Path = Path("build/bench")  # exports made for the benchmark
    probes: bool = True  # time to first image and peak memory, each backend in a fresh process
    quality: bool = False  # adherence and fp16-vs-fp32 similarity on the trained `shapes` model
    peak_sizes: tuple[int, ...] = (1024, 2048, 4096)  # square GEMMs tried for the machine's peak
    size_ranges: dict = field(default_factory=dict)  # model -> (min, max) export range, when not the default
    one_at_a_time: bool = False  # load and run one backend after the other (not interleaved), for the biggest models
    peers: tuple[str, ...] = ()  # CPU peers run beside sdrt's backends (``peers.PEERS``: optimum-intel, ...)

    def check(self) -> None:
        unknown = [b for b in self.backends if b != REFERENCE and b.partition(":")[0] not in KNOWN_BACKENDS + ("auto",)]
        if unknown:
            raise UserInputError(f"unknown backend(s) {', '.join(unknown)}; available: {REFERENCE}, "
                                 f"{', '.join(KNOWN_BACKENDS)}, auto (openvino:bf16 for bf16)")
        if self.precision not in ("fp32", "fp16"):
            raise UserInputError(f"precision (of the exported graphs) must be fp32 or fp16, got {self.precision!r}")
        if self.warmup < 0 or self.repeats < 1 or self.steps < 1:
            raise UserInputError("warm-up must be >= 0, repeats and steps >= 1")
        self.peer_configs()

    def peer_configs(self) -> dict:
        """The peer rows by name (a bare peer name: one row per precision class of the sdrt backends)."""
        from .peers import expand_peers

        classes = {"bf16" if metrics.parity_class(b, self.precision) == "bf16" else "fp32"
                   for b in self.backends if b != REFERENCE}
        return {c.name: c for c in expand_peers(self.peers, classes)}


@dataclass(frozen=True)
class AddonBenchOptions:
    """What an add-on's benchmark (``sdrt bench --lora / --controlnet / --preview``) runs on: one model and size,
    interleaved requests per backend."""
    model: str = "sd15-arch"
    backends: tuple[str, ...] = ("onnxruntime", "openvino")
    size: int = 256
    steps: int = 10
    warmup: int = 1
    repeats: int = 3
    sampler: str = "dpm++2m"
    work_dir: Path = Path("build/bench")

    def export(self, log: Callable, lora: bool = False, deep_cache: bool = False) -> Path:
        """The model's export for the benchmark (made once in ``work_dir``; with LoRA sites or without, with
        DeepCache's shallow U-Net or without)."""
        return prepare_export(self.model, BenchOptions(models=(self.model,), work_dir=self.work_dir), log,
                              lora=lora, deep_cache=deep_cache)[0]

    def report(self) -> dict:
        """The start of the add-on's report: the machine and these options."""
        return {"machine": machine_info(), "options": {**asdict(self), "work_dir": str(self.work_dir)}}


def prepare_export(model: str, opts: BenchOptions, log: Callable, precision: str | None = None,
                   lora: bool = True, deep_cache: bool = False) -> tuple[Path, dict]:
    """An export folder for ``model`` (an export folder is used as it is), its size and, when made here, the time
    the export took. The export runs in a child process: it needs many GB (13 for SD 1.5) that the benchmark
    process should not keep. ``lora=False``: graphs without LoRA sites; ``deep_cache``: with DeepCache's graphs."""
    precision = precision or opts.precision
    path = Path(model)
    seconds = None
    if (path / MANIFEST_NAME).is_file():
        folder = path
    else:
        suffix = ('' if lora else '-nolora') + ('-deepcache' if deep_cache else '')
        folder = opts.work_dir / f"{model.replace('/', '_')}-{precision}{suffix}"
        if not (folder / MANIFEST_NAME).is_file():
            log(f"exporting {model} ({precision}) to {folder}")
            cmd = [sys.executable, "-m", "sdrt.cli", "export", model, str(folder)]
            cmd += ["--fp16"] if precision == "fp16" else []
            cmd += ([] if lora else ["--no-lora"]) + (["--deepcache"] if deep_cache else [])
            if model in opts.size_ranges:
                cmd += ["--size-range", ",".join(map(str, opts.size_ranges[model]))]
            t0 = time.perf_counter()
            run = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if run.returncode != 0:
                raise SdrtError(f"exporting {model} for the benchmark failed: {run.stderr.strip()[-2000:]}")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return folder, {"folder": str(folder), "export_seconds": seconds, "size_bytes": size, "reused": seconds is None}


def _probe(folder: Path, backend: str, height: int, width: int, batch: int, opts: BenchOptions) -> dict:
    cmd = [sys.executable, "-m", "sdrt.benchmarks.probe", str(folder), backend, str(height), str(width), str(batch),
           str(opts.steps), opts.sampler]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def _parity(out: Output, ref: Output, precision: str) -> dict:
    """How close ``out`` is to the reference: final latents and images (images alone where a peer does not hand
    its latents back)."""
    tol = TOLERANCES[precision]
    rel = None if out.latents is None else metrics.relative_error(out.latents, ref.latents)
    psnrs = [metrics.psnr(a, b) for a, b in zip(out.images, ref.images)]
    result = {
        "latents_rel_error": rel,
        "psnr_db": min(psnrs),
        "ssim": min(metrics.ssim(a, b) for a, b in zip(out.images, ref.images)),
        "max_abs_pixel_diff": max(metrics.max_abs_pixel_diff(a, b) for a, b in zip(out.images, ref.images)),
        "tolerance": tol,
    }
    result["passed"] = bool((rel is None or rel <= tol["latents_rel_error"]) and result["psnr_db"] >= tol["psnr_db"])
    return result


def _compute_precision(backend: str, peak: dict) -> str:
    return "bf16" if "bf16" in backend.split(":")[1:] and "bf16" in peak else "fp32"


def _request(manifest, height: int, width: int, batch: int, opts: BenchOptions) -> Request:
    f = manifest.vae_scale_factor
    latents = make_generator(opts.seed, "torch").randn((batch, manifest.latent_channels, height // f, width // f))
    return Request(opts.prompt, opts.negative_prompt, height, width, batch, opts.steps, opts.guidance, opts.sampler,
                   opts.seed, latents)


def _measure(runners: dict, request: Request, opts: BenchOptions, log: Callable) -> tuple[dict, dict[str, Output]]:
    """Timing stats and the last output of each runner on ``request``, the runners interleaved."""
    outputs: dict[str, Output] = {}

    def run_of(name):
        def run():
            out = runners[name](request)
            outputs[name] = out
            return out.timings
        return run

    log(f"  {request.height}x{request.width} batch {request.batch}: {opts.warmup} warm-up + {opts.repeats} "
        f"{'interleaved ' if len(runners) > 1 else ''}runs of {', '.join(runners)}")
    return interleaved({name: run_of(name) for name in runners}, opts.warmup, opts.repeats), outputs


def bench_config(folder: Path, manifest, request: Request, stats: dict, outputs: dict[str, Output],
                 devices: dict[str, str], opts: BenchOptions, peak: dict[str, float]) -> dict:
    """One config's row per backend: timings, throughput, FLOP rate, and parity against the reference."""
    cfg = 2 if opts.guidance > 1 else 1
    # the U-Net's input shapes of one step: a static profile's min runs without guidance, its max with it
    shapes = component_shapes(manifest, UNET.name, static_profile(request.height, request.width, request.batch))
    flops = count_flops(folder / manifest.components[UNET.name].file,
                        {name: shape[2 if cfg == 2 else 0] for name, shape in shapes.items()})
    result = {"height": request.height, "width": request.width, "batch": request.batch, "unet_batch": cfg * request.batch,
              "flops_per_unet_step": asdict(flops) | {"total": flops.total}, "backends": {}}
    ref = stats.get(REFERENCE)
    peers = opts.peer_configs()
    for name, s in stats.items():
        step = s["unet_step"].median
        entry = {
            "device": devices[name],
            "timings": {k: v.to_json() for k, v in s.items()},
            "images_per_second": request.batch / s["total"].median,
            "unet_gflops_per_second": flops.total / step / 1e9,
            # against the peak of the precision the backend computes in (bf16 where asked; fp16 graphs on the CPU
            # compute through fp32 kernels or casts, so fp32)
            "peak_precision": _compute_precision(name, peak),
            "unet_peak_fraction": flops.total / step / peak[_compute_precision(name, peak)],
            "overhead_share": s["overhead"].median / s["total"].median,
        }
        if ref is not None:
            entry["speedup_total"] = ref["total"].median / s["total"].median
            entry["speedup_unet_step"] = ref["unet_step"].median / step
            if name in peers and not peers[name].peer.takes_noise:
                entry["parity"] = None  # it draws its own starting noise: no like-for-like image to compare
            elif name != REFERENCE:
                entry["parity"] = _parity(outputs[name], outputs[REFERENCE],
                                          metrics.parity_class(name, manifest.precision))
        if name in peers:
            entry["peer"] = peers[name].peer.about
        result["backends"][name] = entry
    return result


def _runner(name: str, folder: Path, manifest, request: Request, opts: BenchOptions, peers: dict, log: Callable):
    if name == REFERENCE:
        from ..export.sources import load_model

        return TorchRunner(load_model(manifest.source["model"]).pipe)
    if name in peers:
        from .peers.runner import PeerRunner

        runner = PeerRunner(peers[name], request, opts.work_dir / "peers", log)
        try:
            runner(request)  # a first run in the fresh worker: its time to first image, and any failure, up front
        except BaseException:
            runner.close()
            raise
        return runner
    return SdrtRunner(folder, name)


def _prepare_peers(manifest, opts: BenchOptions, log: Callable) -> tuple[dict, dict[str, str]]:
    """Each peer installed and the model converted for it, before any runner loads; and the peers that could not
    be, with why."""
    from .peers.runner import prepare_peer

    prepared, failed = {}, {}
    for name, config in opts.peer_configs().items():
        try:
            prepared[name] = prepare_peer(config, manifest.source["model"], opts.work_dir / "peers", log)
        except SdrtError as e:
            log(f"  {name} not run: {e}")
            failed[name] = str(e)
    return prepared, failed


def _schedule(n_requests: int, opts: BenchOptions) -> list[tuple[list[str], list[int]]]:
    """Which runners are loaded together, for which requests (indices). All interleaved on every request; with
    ``one_at_a_time`` each alone. With peers, the reference runs alone first (everything at once would not fit in
    memory: seven processes of GBs each) and the rest interleaved, loaded anew per request (a static-shape peer is
    made for one size)."""
    names, every = list(opts.backends) + list(opts.peer_configs()), list(range(n_requests))
    if opts.one_at_a_time:
        return [([name], every) for name in names]
    if not opts.peers:
        return [(names, every)]
    groups = [[REFERENCE], [n for n in names if n != REFERENCE]] if REFERENCE in names else [names]
    return [(group, [i]) for i in every for group in groups]


def _unet_kernels(runners: dict) -> dict[str, dict[str, int]]:
    """The U-Net's matrix kernels of each runner that can say (sdrt's OpenVINO backends)."""
    mixes = {name: r.unet_kernels() for name, r in runners.items() if isinstance(r, SdrtRunner)}
    return {name: mix for name, mix in mixes.items() if mix}


def bench_model(folder: Path, manifest, opts: BenchOptions, peak: dict[str, float], log: Callable
                ) -> tuple[list[dict], dict]:
    """Every config of one model: its rows, and the images of each config's last run by backend (see
    ``_schedule`` for which run together)."""
    requests = [_request(manifest, size, size, batch, opts) for size in opts.sizes for batch in opts.batches]
    stats: list[dict] = [{} for _ in requests]
    outputs: list[dict] = [{} for _ in requests]
    first_images: list[dict] = [{} for _ in requests]  # peers' time to first image and memory, from their workers
    kernels: list[dict] = [{} for _ in requests]  # OpenVINO backends: the U-Net's matrix kernels, as it ran
    devices: dict[str, str] = {}
    peers, not_run = _prepare_peers(manifest, opts, log)  # not_run: backend or peer -> why
    for group, indices in _schedule(len(requests), opts):
        runners = {}
        try:
            for name in group:
                if name in not_run:
                    continue
                try:
                    runners[name] = _runner(name, folder, manifest, requests[indices[0]], opts, peers, log)
                except SdrtError as e:  # e.g. refused for memory before loading: a row saying why, not a crash
                    log(f"  {name} not run: {e}")
                    not_run[name] = str(e)
                    continue
                devices[name] = runners[name].device
            if not runners:
                continue
            for i in indices:
                s, out = _measure(runners, requests[i], opts, log)
                stats[i].update(s)
                outputs[i].update(out)
                kernels[i].update(_unet_kernels(runners))
        finally:
            for name, r in runners.items():
                r.close()
                if hasattr(r, "first_image"):
                    first_images[indices[0]][name] = r.first_image
            runners.clear()
            gc.collect()  # the torch runner's timing wrappers make reference cycles; free its GBs now
    configs = [bench_config(folder, manifest, r, s, o, devices, opts, peak) | {"not_run": not_run}
               for r, s, o in zip(requests, stats, outputs)]
    for config, firsts, mixes in zip(configs, first_images, kernels):
        for name, first in firsts.items():
            config["backends"][name]["first_image"] = first
        for name, mix in mixes.items():
            config["backends"][name]["unet_kernels"] = mix
    images = {(r.height, r.batch): {name: out.images[0] for name, out in o.items()} for r, o in zip(requests, outputs)}
    return configs, images


def run_bench(opts: BenchOptions, log: Callable = print) -> tuple[dict, dict]:
    """Every figure of the report (a JSON-ready dict), and the images of the last run of each config (for plots)."""
    opts.check()
    report: dict = {"machine": machine_info(), "options": {k: (str(v) if isinstance(v, Path) else v)
                                                           for k, v in asdict(opts).items()}}
    log("measuring the machine's GEMM peak")
    report["peak"] = measure_peak(opts.peak_sizes)
    peak = {p: report["peak"][f"peak_{p}"] for p in ("fp32", "bf16") if f"peak_{p}" in report["peak"]}
    report["models"], images = [], {}
    for model in opts.models:
        folder, export_info = prepare_export(model, opts, log)
        manifest = load_manifest(folder)
        log(f"{model}: {folder} ({manifest.family}, {manifest.precision})")
        configs, model_images = bench_model(folder, manifest, opts, peak, log)
        images.update({(model, size, batch): by_backend for (size, batch), by_backend in model_images.items()})
        if opts.probes:  # after the runners are gone, so the probes' memory adds to little
            log("  time to first image and peak memory, each backend in a fresh process")
            for config in configs:
                for name, entry in config["backends"].items():
                    if "first_image" in entry:  # a peer's, measured in its own fresh worker
                        continue
                    entry["first_image"] = _probe(folder, name, config["height"], config["width"], config["batch"], opts)
        report["models"].append({"model": model, "family": manifest.family, "precision": manifest.precision,
                                 "export": export_info, "configs": configs})
    if opts.peers:
        from .peers.summary import vs_best_peer

        names = set(opts.peer_configs())
        not_run = {n for m in report["models"] for c in m["configs"] for n in c["not_run"]}
        report["summary"] = {"vs_best_peer": vs_best_peer(report["models"], names, not_run,
                                                          lambda n: metrics.parity_class(n, opts.precision))}
    if opts.quality:
        from .quality import shapes_quality

        log("quality on the trained shapes model (fp32 and fp16 graphs)")
        folders = {p: prepare_export("shapes", opts, log, precision=p)[0] for p in ("fp32", "fp16")}
        report["quality"] = shapes_quality(opts.backends, folders, log)
    return report, images
