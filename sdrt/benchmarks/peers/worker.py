"""One peer's pipeline in its own process and virtual environment, driven by ``sdrt bench`` over JSON lines.

Runs under the peer's interpreter, so it imports only the standard library, numpy and the peer's own package —
never sdrt. ``python worker.py PEER MODEL CONFIG_JSON``: loads the peer's pipeline, prints ``{"ready": …}``, then
answers each request line (``{"prompt": …, "latents": path or null, "out": folder}``) with the run's raw timings
and where its image (and final latents, where the peer gives them) were saved; an empty line ends it with the
process's peak memory. Libraries' own prints go to stderr: stdout carries the protocol alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

STARTED = time.perf_counter()


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Timed:
    """Seconds and calls per stage, from a peer's component calls wrapped in place."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def wrap(self, obj, attr: str, stage: str) -> None:
        call = getattr(obj, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = call(*args, **kwargs)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
            self.calls[stage] = self.calls.get(stage, 0) + 1
            return out

        setattr(obj, attr, timed)


class OptimumIntel:
    """optimum-intel's OVStableDiffusionPipeline on the IR its ``optimum-cli export openvino`` made; a diffusers
    pipeline whose components are OpenVINO models, so it takes the starting latents and diffusers' schedulers."""

    def __init__(self, model: str, config: dict):
        from optimum.intel import OVStableDiffusionPipeline

        precision = {"bf16": "bf16", "fp32": "f32"}[config["precision"]]
        self.pipe = OVStableDiffusionPipeline.from_pretrained(
            model, compile=False, ov_config={"INFERENCE_PRECISION_HINT": precision})
        if config.get("static"):  # optimum-intel's own static-shape mode
            self.pipe.reshape(batch_size=config["batch"], height=config["height"], width=config["width"],
                              num_images_per_prompt=1)
        self.pipe.compile()
        self.pipe.set_progress_bar_config(disable=True)
        self.timed = Timed()
        for part, attr, stage in ((self.pipe.text_encoder, "forward", "text_encoder"),
                                  (self.pipe.unet, "forward", "unet"),
                                  (self.pipe.vae.decoder, "forward", "vae_decoder")):
            self.timed.wrap(part, attr, stage)

    def __call__(self, r: dict) -> tuple[np.ndarray, np.ndarray | None]:
        import diffusers
        import torch

        self.pipe.scheduler = getattr(diffusers, r["scheduler"]).from_config(self.pipe.scheduler.config,
                                                                            **r["scheduler_options"])
        final = {}

        def keep_latents(pipe, i, t, kwargs):
            final["latents"] = kwargs["latents"]
            return {}

        latents = torch.from_numpy(np.load(r["latents"]))
        images = self.pipe([r["prompt"]] * r["batch"], negative_prompt=[r["negative_prompt"]] * r["batch"],
                           num_inference_steps=r["steps"], guidance_scale=r["guidance"], height=r["height"],
                           width=r["width"], latents=latents, output_type="np", callback_on_step_end=keep_latents,
                           callback_on_step_end_tensor_inputs=["latents"]).images
        return (images * 255).round().astype(np.uint8), final["latents"].numpy()


class OpenVinoGenai:
    """OpenVINO GenAI's Text2ImagePipeline (its C++ loop) on the same IR folder; the starting latents are handed
    over through a Generator subclass, as GenAI's samples do to match diffusers."""

    def __init__(self, model: str, config: dict):
        import openvino_genai

        precision = {"bf16": "bf16", "fp32": "f32"}[config["precision"]]
        self.genai = openvino_genai
        self.pipe = openvino_genai.Text2ImagePipeline(model)
        if config.get("static"):
            self.pipe.reshape(1, config["height"], config["width"], config["guidance"])
        self.pipe.compile("CPU", INFERENCE_PRECISION_HINT=precision)
        self.timed = Timed()

    def _generator(self, latents: np.ndarray):
        import openvino

        genai = self.genai

        class GivenNoise(genai.Generator):
            def next(self):
                raise RuntimeError("only the starting latents are drawn")

            def randn_tensor(self, shape):
                if list(shape) != list(latents.shape):
                    raise RuntimeError(f"asked for noise of shape {list(shape)}, have {list(latents.shape)}")
                return openvino.Tensor(latents)

        return GivenNoise()

    def __call__(self, r: dict) -> tuple[np.ndarray, np.ndarray | None]:
        self.pipe.set_scheduler(self.genai.Scheduler.from_config(r["scheduler_config"], getattr(
            self.genai.Scheduler.Type, r["sampler"])))
        images = self.pipe.generate(r["prompt"], negative_prompt=r["negative_prompt"], num_images_per_prompt=r["batch"],
                                    num_inference_steps=r["steps"], guidance_scale=r["guidance"], height=r["height"],
                                    width=r["width"], generator=self._generator(np.load(r["latents"])))
        metrics = self.pipe.get_performance_metrics()
        unet = metrics.raw_metrics.unet_inference_durations  # microseconds, one per U-Net call
        self.timed.seconds = {"unet": sum(float(d) for d in unet) / 1e6,
                              "text_encoder": _mean_ms_total(metrics.get_text_encoder_infer_duration()) / 1e3,
                              "vae_decoder": metrics.get_vae_decoder_infer_duration() / 1e3}
        self.timed.calls = {"unet": len(unet)}
        return np.array(images.data), None


def _mean_ms_total(durations) -> float:
    """GenAI reports text encoders' times as {encoder: ms}."""
    return float(sum(durations.values())) if isinstance(durations, dict) else float(durations)


class StableDiffusionCpp:
    """stable-diffusion.cpp (ggml) through stable-diffusion-cpp-python, on the single-file checkpoint; its own RNG,
    so it cannot start from the same noise. Weights in the run's precision (``wtype``)."""

    def __init__(self, model: str, config: dict):
        from stable_diffusion_cpp import StableDiffusion

        self.sd = StableDiffusion(model_path=model, wtype={"bf16": "bf16", "fp32": "f32"}[config["precision"]],
                                  n_threads=os.cpu_count() or 1, vae_decode_only=True)
        self.timed = Timed()

    def __call__(self, r: dict) -> tuple[np.ndarray, np.ndarray | None]:
        steps = []

        def on_step(step: int, total: int, seconds: float):
            steps.append(seconds)

        images = self.sd.generate_image(prompt=r["prompt"], negative_prompt=r["negative_prompt"], width=r["width"],
                                        height=r["height"], sample_steps=r["steps"], cfg_scale=r["guidance"],
                                        sample_method=r["sampler"], seed=r["seed"], batch_count=r["batch"],
                                        progress_callback=on_step)
        self.timed.seconds = {"unet": sum(steps)}
        # a step runs the conditional and the unconditional pass: one U-Net call of batch 2 elsewhere
        self.timed.calls = {"unet": len(steps)}
        return np.stack([np.asarray(im.convert("RGB")) for im in images]), None


PEERS = {"optimum-intel": OptimumIntel, "openvino-genai": OpenVinoGenai, "sdcpp": StableDiffusionCpp}


def serve(protocol, peer: str, model: str, config: dict) -> None:
    pipe = PEERS[peer](model, config)
    _send(protocol, {"ready": {"load_s": time.perf_counter() - STARTED}})
    for line in sys.stdin:
        if not line.strip():
            break
        request = json.loads(line)
        pipe.timed.reset()
        t0 = time.perf_counter()
        images, latents = pipe(request)
        total = time.perf_counter() - t0
        out = Path(request["out"])
        np.save(out / "images.npy", images)
        if latents is not None:
            np.save(out / "latents.npy", latents)
        _send(protocol, {"total": total, "stages": pipe.timed.seconds, "calls": pipe.timed.calls,
                         "latents": latents is not None, "since_start_s": time.perf_counter() - STARTED})
    _send(protocol, {"peak_rss_mib": peak_rss_mib()})


def _send(protocol, message: dict) -> None:
    protocol.write(json.dumps(message) + "\n")
    protocol.flush()


def main(argv: list[str]) -> int:
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the libraries print goes to stderr
    peer, model, config = argv
    try:
        serve(protocol, peer, model, json.loads(config))
    except Exception as e:  # noqa: BLE001 — the bench reports any failure as this peer's "not run"
        _send(protocol, {"error": f"{type(e).__name__}: {e}"})
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
