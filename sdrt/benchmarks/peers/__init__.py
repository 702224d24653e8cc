"""The CPU peers a user would pick instead of sdrt, run beside its backends by ``sdrt bench --peers``.

Each peer is a description (what to install, which model format it reads, what it can take), installed on demand
from the package registries into its own virtual environment (``environment.py``: its pins never move sdrt's), fed
the very weights of the benchmark's model converted with its own tool (``models.py``), and driven in its own
process by ``worker.py`` (``runner.py``), so sdrt's interleaved timing loop treats it like one more backend.

A row name reads like a backend's: ``PEER[:bf16][:static]`` (fp32 unless ``bf16``; ``static``: the peer's own
static-shape mode, where it has one).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UserInputError


@dataclass(frozen=True)
class Peer:
    name: str
    requirements: tuple[str, ...]  # pip requirement specifiers, installed into the peer's own environment
    model_format: str  # "openvino-ir" (optimum-cli's export folder) | "single-file" (an original-layout checkpoint)
    takes_noise: bool  # can start from the benchmark's latents (so parity against diffusers is measured)
    static: bool  # has a static-shape mode
    samplers: dict[str, str]  # sdrt sampler -> the peer's name for it
    about: str
    uninstall: tuple[str, ...] = ()  # packages its requirements pull in that break it here (removed after install)


# GenAI's schedulers (openvino_genai.Scheduler.Type) and stable-diffusion.cpp's sample methods, by sdrt sampler.
_GENAI_SAMPLERS = {"euler": "EULER_DISCRETE", "euler-a": "EULER_ANCESTRAL_DISCRETE", "ddim": "DDIM",
                   "lms": "LMS_DISCRETE", "pndm": "PNDM", "lcm": "LCM"}
_SDCPP_SAMPLERS = {"euler": "euler", "euler-a": "euler_a", "heun": "heun", "dpm++2m": "dpm++2m", "lcm": "lcm"}
_DIFFUSERS_SAMPLERS = {s: s for s in ("ddim", "pndm", "dpm++2m", "dpm++2m-karras", "euler", "euler-a", "heun", "lms",
                                      "unipc", "lcm")}

PEERS = {
    "optimum-intel": Peer(
        "optimum-intel",
        # openvino-tokenizers: its export then writes the tokenizer IR that OpenVINO GenAI reads from the same folder
        ("optimum-intel[openvino]==2.2.0", "openvino-tokenizers==2026.4.1.0", "diffusers==0.39.0", "torch==2.13.0",
         "numpy"),
        "openvino-ir", takes_noise=True, static=True, samplers=_DIFFUSERS_SAMPLERS,
        about="optimum-intel's OVStableDiffusionPipeline (diffusers' loop over OpenVINO models)",
        # PyPI's torchvision is built for the CUDA torch: beside the CPU one its operators fail to register and
        # transformers' import breaks with it; nothing here uses it
        uninstall=("torchvision",)),
    "openvino-genai": Peer(
        "openvino-genai", ("openvino-genai==2026.4.1.0", "numpy"),
        "openvino-ir", takes_noise=True, static=True, samplers=_GENAI_SAMPLERS,
        about="OpenVINO GenAI's Text2ImagePipeline (a C++ loop over OpenVINO)"),
    "sdcpp": Peer(
        "sdcpp", ("stable-diffusion-cpp-python==0.4.7", "numpy"),
        "single-file", takes_noise=False, static=False, samplers=_SDCPP_SAMPLERS,
        about="stable-diffusion.cpp (ggml), built from source by stable-diffusion-cpp-python"),
}


@dataclass(frozen=True)
class PeerConfig:
    """One peer row: ``optimum-intel:bf16:static``."""
    peer: Peer
    precision: str  # fp32 | bf16
    static: bool

    @property
    def name(self) -> str:
        return self.peer.name + (":bf16" if self.precision == "bf16" else "") + (":static" if self.static else "")


def parse_peer(spec: str) -> PeerConfig:
    name, *options = spec.split(":")
    if name not in PEERS:
        raise UserInputError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    peer = PEERS[name]
    unknown = [o for o in options if o not in ("bf16", "fp32", "static")]
    if unknown or ("static" in options and not peer.static):
        raise UserInputError(f"peer {spec!r}: options are bf16 or fp32" + (" and static" if peer.static else "")
                             + f", got {':'.join(options)}")
    return PeerConfig(peer, "bf16" if "bf16" in options else "fp32", "static" in options)


def expand_peers(specs: tuple[str, ...], precisions: set[str]) -> list[PeerConfig]:
    """Each spec as a row; a bare peer name (no options) becomes one row per precision class the run's sdrt
    backends compute in, so every sdrt row has the peer's like to compare with."""
    configs = []
    for spec in specs:
        if ":" in spec:
            configs.append(parse_peer(spec))
        else:
            configs += [parse_peer(f"{spec}:{p}") for p in sorted(precisions, reverse=True)]
    return list({c.name: c for c in configs}.values())
