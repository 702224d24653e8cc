"""AUTOMATIC1111's LoRA prompt tags: ``<lora:NAME>``, ``<lora:NAME:WEIGHT>``, ``<lora:NAME:TE_WEIGHT:UNET_WEIGHT>``
and ``<lora:NAME:te=W:unet=W>`` (``lyco:`` too). Taken out of the prompt before it is encoded; the PNG parameters keep
the prompt as written, as AUTOMATIC1111's do."""

from __future__ import annotations

import re

from ..errors import UserInputError

TAG = re.compile(r"<(?:lora|lyco):([^>]+)>")


def remove_tags(prompt: str) -> str:
    return TAG.sub("", prompt)


def read_tags(prompt: str) -> list[tuple[str, float, float]]:
    """(name, text-encoder weight, U-Net weight) of each tag in ``prompt``."""
    return [_parse(m[1], m[0]) for m in TAG.finditer(prompt)]


def _parse(body: str, tag: str) -> tuple[str, float, float]:
    name, *args = body.split(":")
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    try:
        te = float(named.get("te", positional[0] if positional else 1.0))
        unet = float(named.get("unet", positional[1] if len(positional) > 1 else te))
    except ValueError:
        raise UserInputError(f"cannot read the weights of {tag}: write <lora:NAME:WEIGHT>, e.g. <lora:{name}:0.8>") from None
    if not name.strip():
        raise UserInputError(f"{tag} names no LoRA: write <lora:NAME:WEIGHT>")
    return name.strip(), te, unet
