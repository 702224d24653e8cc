"""The service behind the HTTP routes: one Pipeline, loaded once, run by the batcher; progress, interrupt, metrics.

It only translates jobs to ``Pipeline`` calls and back (the loop stays the runtime's): a joined batch is one call
with one prompt and one seed per image.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..runtime import GenerationResult, Pipeline
from ..runtime.preview import Preview
from .a1111 import checkpoint_title
from .batcher import Job
from .settings import OPTION_DEFAULTS

log = logging.getLogger("sdrt")

WATCH_SECONDS = 10.0  # previews are made while a client asked for one this recently


class Cancelled(Exception):
    """Every client of the running batch went away: the loop stops, nothing is decoded."""


@dataclass(frozen=True)
class ServeOptions:
    backend: str = "onnxruntime"
    max_batch: int = 4  # images per joined pipeline run
    max_queue: int = 64  # requests waiting
    timeout: float = 600.0  # seconds a request may take, waiting included: 504 past it
    warmup: bool = True  # one small run at start-up, so /ready means warm
    refiner: str | None = None  # an SDXL refiner's export, used by requests that name it
    lora_dir: str | None = None  # where prompts' <lora:NAME:WEIGHT> tags find LoRAs (default: the export's loras/)
    embeddings_dir: str | None = None  # the textual inversions prompts name (default: the export's embeddings/)
    preview_every: int = 5  # a live preview in /sdapi/v1/progress every N steps (0: none), within 4 % of the time


@dataclass
class Progress:
    """What /sdapi/v1/progress reports about the running batch."""
    job: str = ""
    job_count: int = 0
    step: int = 0
    steps: int = 0
    started: float = 0.0
    interrupted: bool = False
    preview: list[Image.Image] = field(default_factory=list)  # the running batch's latest live preview
    watched: float = -1e9  # when a client last asked for the preview (none is made while nobody watches)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fraction(self) -> float:
        return self.step / self.steps if self.steps else 0.0

    def eta(self) -> float:
        done = self.fraction()
        return (time.perf_counter() - self.started) * (1 - done) / done if done else 0.0


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("sdrt_queue_depth", "requests waiting", registry=r)
        self.requests = Counter("sdrt_requests_total", "requests answered, by route and status", ["route", "status"],
                                registry=r)
        self.batch_images = Histogram("sdrt_batch_images", "images per pipeline run", buckets=(1, 2, 3, 4, 6, 8, 16),
                                      registry=r)
        self.batch_requests = Histogram("sdrt_batch_requests", "requests joined per pipeline run",
                                        buckets=(1, 2, 3, 4, 6, 8, 16), registry=r)
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
        self.queue_wait = Histogram("sdrt_queue_wait_seconds", "time from arrival to the start of its run", buckets=buckets,
                                    registry=r)
        self.latency = Histogram("sdrt_request_seconds", "time from arrival to the answer", buckets=buckets, registry=r)
        self.images = Counter("sdrt_images_total", "images generated", registry=r)
        self.component_calls = Counter("sdrt_component_calls_total", "backend calls by component", ["component"],
                                       registry=r)


class Service:
    def __init__(self, folder: str | Path, options: ServeOptions):
        self.folder, self.options = Path(folder), options
        self.pipe: Pipeline | None = None
        self.ready = False
        self.error: str | None = None  # why loading failed
        self.progress = Progress()
        self.metrics = Metrics()
        self.a1111_options = dict(OPTION_DEFAULTS)  # POST /sdapi/v1/options changes them (settings.py reads them)
        self._loading = threading.Lock()
        self._running: list[Job] = []  # the jobs of the batch being run
        self.previews = Preview(self._show_preview, options.preview_every, wanted=self._watched)

    # -- start-up ------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the export once (and warm the backend up); blocking, run off the event loop. Idempotent."""
        with self._loading:
            if not self.ready:
                self._load()

    def _load(self) -> None:
        try:
            pipe = Pipeline.load(self.folder, backend=self.options.backend, refiner=self.options.refiner,
                                 lora_dir=self.options.lora_dir, embeddings_dir=self.options.embeddings_dir)
            calls = self.metrics.component_calls
            pipe.backend.observers.append(lambda component, seconds: calls.labels(component).inc())
            if self.options.warmup:
                size = pipe.manifest.default_size
                pipe("warm-up", num_inference_steps=1, height=size, width=size, seed=0)
            self.pipe, self.ready = pipe, True
            log.info("serving %s on %s (%s)", self.folder, pipe.backend.name, pipe.backend.device)
        except Exception as e:
            self.error = str(e)
            log.error("cannot serve %s: %s", self.folder, e)
            raise

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.close()

    @property
    def model_name(self) -> str:
        return _source_name(self.pipe, self.folder.name)

    @property
    def model_hash(self) -> str:
        return self.pipe.manifest.model_hash if self.pipe else ""

    @property
    def model_title(self) -> str:
        """The served model as AUTOMATIC1111 names a checkpoint: ``name [hash]``."""
        return checkpoint_title(self.model_name, self.model_hash)

    @property
    def refiner(self) -> tuple[str, str] | None:
        """The loaded refiner's name and hash, if one is loaded."""
        refiner = self.pipe.refiner if self.pipe else None
        return None if refiner is None else (_source_name(refiner, Path(str(refiner.folder)).name),
                                             refiner.manifest.model_hash)

    @property
    def max_batch(self) -> int:
        return min(self.options.max_batch, self.pipe.manifest.max_batch) if self.pipe else self.options.max_batch

    # -- running ------------------------------------------------------------------------------------------

    def on_batch(self, jobs: list[Job]) -> None:
        self.metrics.batch_images.observe(sum(j.images for j in jobs))
        self.metrics.batch_requests.observe(len(jobs))
        for job in jobs:
            self.metrics.queue_wait.observe(job.started - job.enqueued)

    def interrupt(self) -> None:
        with self.progress.lock:
            self.progress.interrupted = True

    def run_batch(self, jobs: list[Job]) -> list[GenerationResult]:
        """One pipeline call for jobs that share a key (a single large job runs in max_batch-sized pieces);
        returns each job's own result."""
        params = jobs[0].params
        prompts = [p for j in jobs for p in j.prompts]
        negatives = [n for j in jobs for n in j.negatives]
        seeds = [s for j in jobs for s in j.seeds]
        # img2img runs one image per call (its draws are not per-image); txt2img joins up to max_batch images
        image_mode = params.get("image") is not None
        size = 1 if image_mode else self.max_batch
        pieces = range(0, len(seeds), size)
        with self.progress.lock:
            self.progress.job = f"batch of {len(jobs)} request(s), {len(seeds)} image(s)"
            self.progress.job_count, self.progress.step = len(pieces), 0
            self.progress.steps = params.get("num_inference_steps", 0) * len(pieces)
            self.progress.started, self.progress.interrupted = time.perf_counter(), False
            self.progress.preview, self._running = [], jobs
        results = []
        try:
            for start in pieces:
                part = slice(start, start + size)
                results.append(self.pipe(
                    prompt=prompts[part], negative_prompt=negatives[part], num_images=1,
                    seed=seeds[part][0] if image_mode else seeds[part], callback=self._step, preview=self.previews,
                    **params))
        finally:
            with self.progress.lock:
                self.progress.job, self.progress.steps, self.progress.step = "", 0, 0
                self.progress.preview, self._running = [], []
        merged = _merge(results)
        self.metrics.images.inc(len(merged.images))
        out, at = [], 0
        for job in jobs:
            out.append(_slice(merged, at, at + job.images))
            at += job.images
        return out

    def _step(self, i: int, total: int) -> bool:
        if all(job.cancelled for job in self._running):
            raise Cancelled()  # nobody waits for these images
        with self.progress.lock:
            self.progress.step += 1
            return self.progress.interrupted  # True stops the loop; the latents so far are decoded (as A1111)

    # -- live previews ------------------------------------------------------------------------------------

    def current_image(self) -> Image.Image | None:
        """The running batch's latest preview (a grid for several images); asking counts as watching."""
        with self.progress.lock:
            self.progress.watched = time.perf_counter()
            images = self.progress.preview
        return _grid(images) if images else None

    def _watched(self) -> bool:
        return time.perf_counter() - self.progress.watched < WATCH_SECONDS

    def _show_preview(self, step: int, images: list[Image.Image]) -> None:
        with self.progress.lock:
            self.progress.preview = images


def _source_name(pipe: Pipeline | None, fallback: str) -> str:
    """A model's name as A1111 shows it: the stem of what it was exported from, else ``fallback``."""
    source = pipe.manifest.source.get("model") if pipe else None
    return Path(str(source)).stem if source else fallback


def _grid(images: list[Image.Image]) -> Image.Image:
    """The images side by side in a near-square grid, as AUTOMATIC1111's progress grid."""
    if len(images) == 1:
        return images[0]
    columns = int(np.ceil(np.sqrt(len(images))))
    rows = -(-len(images) // columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h))
    for k, image in enumerate(images):
        grid.paste(image, ((k % columns) * w, (k // columns) * h))
    return grid


def _merge(results: list[GenerationResult]) -> GenerationResult:
    if len(results) == 1:
        return results[0]
    first = results[0]
    return GenerationResult([i for r in results for i in r.images], np.concatenate([r.latents for r in results]),
                            first.seed, [p for r in results for p in r.parameters], first.timings, first.mode,
                            [s for r in results for s in r.seeds])


def _slice(result: GenerationResult, start: int, stop: int) -> GenerationResult:
    return GenerationResult(result.images[start:stop], result.latents[start:stop], result.seeds[start],
                            result.parameters[start:stop], result.timings, result.mode, result.seeds[start:stop])
