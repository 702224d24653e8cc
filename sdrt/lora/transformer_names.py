"""The original names of SD 3's and Flux's transformer layers — Stability's MMDiT (``joint_blocks.0.x_block.attn.qkv``)
and Black Forest Labs' Flux (``double_blocks.0.img_attn.qkv``, ``single_blocks.0.linear1``) — as kohya's and
ComfyUI's LoRAs for them write them. These are the inverse of diffusers' single-file conversions.

One original layer can be several diffusers layers: q, k and v are fused in ``qkv``, and Flux's single blocks fuse
q, k, v and the MLP's input in ``linear1``; and a final modulation's two halves come in the other order (shift,
scale; diffusers' ``swap_scale_shift``). So a name maps to *blocks*: ``(path, part, parts)`` says the original
layer's next output rows are part ``part`` of ``parts`` equal parts of that diffusers layer's rows."""

from __future__ import annotations

import re

Block = tuple[str, int, int]
_SWAPPED = ((1, 2), (0, 2))  # (shift, scale) in the original; diffusers keeps (scale, shift)

FLUX_DOUBLE = {  # per double block: original suffix -> diffusers suffixes, fused in this order
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
}
FLUX_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
FLUX_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
SD3_JOINT = {  # per joint block
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "x_block.attn.proj": ("attn.to_out.0",),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),  # SD 3.5's dual attention
    "x_block.attn2.proj": ("attn2.to_out.0",),
    "x_block.mlp.fc1": ("ff.net.0.proj",),
    "x_block.mlp.fc2": ("ff.net.2",),
    "x_block.adaLN_modulation.1": ("norm1.linear",),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "context_block.attn.proj": ("attn.to_add_out",),
    "context_block.mlp.fc1": ("ff_context.net.0.proj",),
    "context_block.mlp.fc2": ("ff_context.net.2",),
    "context_block.adaLN_modulation.1": ("norm1_context.linear",),  # swapped in the last block (context_pre_only)
}
SD3_TOP = {
    "x_embedder.proj": "pos_embed.proj",
    "context_embedder": "context_embedder",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
}


def original_names(family: str, paths: list[str]) -> dict[str, list[Block]]:
    """Original layer name -> its blocks, for the layers of a ``family`` ("sd3", "flux") transformer whose diffusers
    paths are ``paths`` (its LoRA sites); names whose layers the model lacks are left out."""
    if family == "flux":
        names = _blocks(paths, "transformer_blocks", "double_blocks", FLUX_DOUBLE)
        names |= _blocks(paths, "single_transformer_blocks", "single_blocks", FLUX_SINGLE)
        names |= {name: [(path, 0, 1)] for name, path in FLUX_TOP.items()}
    else:
        names = _blocks(paths, "transformer_blocks", "joint_blocks", SD3_JOINT)
        names |= {name: [(path, 0, 1)] for name, path in SD3_TOP.items()}
        last = max(_indices(paths, "transformer_blocks"), default=None)
        name = f"joint_blocks.{last}.context_block.adaLN_modulation.1"
        if name in names:
            names[name] = _swapped(names[name][0][0])
    names["final_layer.adaLN_modulation.1"] = _swapped("norm_out.linear")
    present = set(paths)
    return {name: blocks for name, blocks in names.items() if all(path in present for path, _, _ in blocks)}


def _blocks(paths: list[str], block: str, original: str, table: dict[str, tuple[str, ...]]) -> dict[str, list[Block]]:
    return {f"{original}.{i}.{suffix}": [(f"{block}.{i}.{part}", 0, 1) for part in parts]
            for i in _indices(paths, block) for suffix, parts in table.items()}


def _indices(paths: list[str], block: str) -> set[int]:
    return {int(m[1]) for p in paths if (m := re.match(rf"{block}\.(\d+)\.", p))}


def _swapped(path: str) -> list[Block]:
    return [(path, part, parts) for part, parts in _SWAPPED]
