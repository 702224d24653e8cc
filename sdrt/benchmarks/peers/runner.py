"""A peer as one more runner of the benchmark's interleaved loop: its worker process (``worker.py`` under the
peer's interpreter) answers each request with its timings, image and, where it can take the starting noise, its
final latents."""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...runtime.schedulers import diffusers_equivalent, model_sampler
from ..runners import STAGES, Output, Request, summarise
from . import PeerConfig
from .environment import PeerUnavailable, last_lines, peer_python
from .models import peer_model

WORKER = Path(__file__).with_name("worker.py")


@dataclass(frozen=True)
class PreparedPeer:
    config: PeerConfig
    python: Path  # its environment's interpreter
    model: Path  # the model in its format


def prepare_peer(config: PeerConfig, source: str, root: Path, log: Callable) -> PreparedPeer:
    """``config``'s peer installed and the model ``source`` converted for it: done before any runner loads, since a
    conversion needs GBs of its own."""
    return PreparedPeer(config, peer_python(config.peer, root, log), peer_model(config, source, root, log))


class PeerRunner:
    def __init__(self, prepared: PreparedPeer, request: Request, root: Path, log: Callable):
        config, python, self.model = prepared.config, prepared.python, prepared.model
        peer = config.peer
        self.config = config
        self.name = config.name
        self.device = f"CPU ({config.precision}{', static' if config.static else ''})"
        self.first_image: dict = {}
        self.scratch = tempfile.TemporaryDirectory(prefix=f"sdrt-peer-{peer.name}-")
        self.log_file = root / peer.name / "worker.log"
        worker_config = {"precision": config.precision, "static": config.static, "height": request.height,
                         "width": request.width, "batch": request.batch, "guidance": request.guidance}
        log(f"  starting {self.name} on {self.model}")
        with open(self.log_file, "w") as err:
            self.process = subprocess.Popen([str(python), str(WORKER), peer.name, str(self.model),
                                             json.dumps(worker_config)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        self.load_s = self._receive()["ready"]["load_s"]

    def __call__(self, r: Request) -> Output:
        sampler = model_sampler(r.sampler, {})
        if sampler not in self.config.peer.samplers:
            raise PeerUnavailable(f"{self.config.peer.name} has no {r.sampler} sampler "
                                  f"(it has {', '.join(self.config.peer.samplers)})")
        out = Path(self.scratch.name)
        np.save(out / "latents.npy", r.latents)
        cls, extra = diffusers_equivalent(sampler)
        request = {"prompt": r.prompt, "negative_prompt": r.negative_prompt, "height": r.height, "width": r.width,
                   "batch": r.batch, "steps": r.steps, "guidance": r.guidance, "seed": r.seed,
                   "latents": str(out / "latents.npy"), "out": str(out),
                   "scheduler": cls, "scheduler_options": extra, "sampler": self.config.peer.samplers[sampler],
                   "scheduler_config": str(self.model / "scheduler" / "scheduler_config.json")
                   if self.model.is_dir() else None}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self._receive()
        if not self.first_image:  # the worker is a fresh process: its first image is the time to first image
            self.first_image = {"load_s": self.load_s, "time_to_first_image_s": reply["since_start_s"]}
        stages = reply["stages"]
        # stages a peer does not expose stay unknown (NaN), and so does the time outside them
        timings = summarise(reply["total"], {s: stages.get(s, math.nan) for s in STAGES},
                            reply["calls"]["unet"])
        latents = np.load(out / "latents.npy") if reply["latents"] else None
        return Output(latents, np.load(out / "images.npy"), timings)

    def _receive(self) -> dict:
        line = self.process.stdout.readline()
        message = json.loads(line) if line.strip() else {"error": f"exited ({self.process.poll()})"}
        if "error" in message:
            self.process.kill()
            raise PeerUnavailable(f"{self.name}: {message['error']} ({last_lines(self.log_file, 2)})")
        return message

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            try:
                self.first_image["peak_rss_mib"] = self._receive()["peak_rss_mib"]
            except PeerUnavailable:
                pass
            self.process.wait(timeout=60)
        self.scratch.cleanup()
