"""Time to first image and peak memory of one backend, measured in a fresh process (so neither the other backends'
libraries nor their memory count): ``python -m sdrt.benchmarks.probe FOLDER BACKEND H W BATCH STEPS SAMPLER``.
Prints one JSON line: import_s, load_s, first_run_s, time_to_first_image_s, peak_rss_mib."""

from __future__ import annotations

import json
import resource
import sys
import time


def probe(folder: str, backend: str, height: int, width: int, batch: int, steps: int, sampler: str) -> dict:
    started = time.perf_counter()
    from ..manifest import load_manifest
    from ..runtime.noise import make_generator
    from .runners import Request, SdrtRunner, TorchRunner

    manifest = load_manifest(folder)
    if backend == "torch":
        import torch  # noqa: F401  (its import time belongs to the torch backend's time to first image)

        from ..export.sources import load_model
    imported = time.perf_counter()
    if backend == "torch":
        runner = TorchRunner(load_model(manifest.source["model"]).pipe)
    else:
        runner = SdrtRunner(folder, backend)
    loaded = time.perf_counter()
    f = manifest.vae_scale_factor
    latents = make_generator(0, "torch").randn((batch, manifest.latent_channels, height // f, width // f))
    runner(Request("a red circle on a blue background", "blurry", height, width, batch, steps, 7.5, sampler, 0, latents))
    done = time.perf_counter()
    return {
        "import_s": imported - started,
        "load_s": loaded - imported,
        "first_run_s": done - loaded,
        "time_to_first_image_s": done - started,
        "peak_rss_mib": peak_rss_mib(),
    }


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over
    exec from the forking parent, so a child of a large benchmark process would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB; an upper bound where /proc is missing


def main(argv: list[str]) -> int:
    folder, backend, h, w, batch, steps, sampler = argv
    print(json.dumps(probe(folder, backend, int(h), int(w), int(batch), int(steps), sampler)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
