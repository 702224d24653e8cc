"""``sdrt export``: load a pipeline, export its four graphs, validate them, write the export folder."""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from ..errors import ExportError
from ..families import detect_family
from ..manifest import DEFAULT_MAX_BATCH, MANIFEST_NAME, ComponentSpec, Manifest, TokenizerSpec
from ..fileio import write_json, write_text
from ..integrity import remember_verified
from . import builtin, memory, onnx_io
from .additions import record_checks
from .controlnet import add_controlnets, parse_source
from .graphs import ComponentGraph, Shape, component_graphs
from .sources import OPTIONAL_T5, load_model
from .tiny_vae import add_tiny_vae, load_tiny_vae
from .validate import Check, as_json, references, report, validate_graph

log = logging.getLogger("sdrt.export")


def _validation_shapes(size_range: tuple[int, int], scale: int) -> list[Shape]:
    """Two shapes unlike the traced one: square batch 1, and non-square batch 2 (64x64 and 48x80 latents, kept
    under the declared maximum; a dynamic graph works below the declared minimum too, and smaller shapes keep a big
    model's check small); LoRA factors of rank 1 (the runtime's "no LoRA") and 3; 1 and 4 textual-inversion
    vectors."""
    hi = size_range[1] // scale
    return [Shape(1, min(hi, 64), min(hi, 64), lora_rank=1, vectors=1),
            Shape(2, min(hi, 48), min(hi, 80), lora_rank=3, vectors=4)]


def _trace_shape(size_range: tuple[int, int], scale: int, multiple: int = 1) -> Shape:
    # An odd latent size makes diffusers' U-Net take its explicit-upsample-size path, so the traced
    # graph sizes each upsampling from its skip connection and works at every latent size, not only
    # multiples of the U-Net's total downsampling factor. Small, so that tracing computes little.
    # A transformer's latent is a whole number of patches: the nearest multiples below.
    side = min(size_range[1] // scale, 33)
    h, w = side | 1, (side + 2) | 1
    return Shape(1, h - h % multiple, w - w % multiple)


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("sdrt", "torch", "diffusers", "transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _prepare_output(out: Path) -> Path:
    """A fresh temporary folder beside ``out``; ``out`` itself is only replaced once all went well."""
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out} exists and is a file. Choose another output folder.")
        if any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
            raise ExportError(f"{out} is not empty and is not an sdrt export folder. Choose an empty or new folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700
    return tmp


def _tokenizer_spec(tokenizer, folder: Path, name: str, length: int = 77) -> TokenizerSpec:
    """``length``: the token sequence the runtime makes (CLIP's 77; T5's fixed length, which has no BOS: -1)."""
    tokenizer.save_pretrained(folder / name)
    if not (folder / name / "tokenizer.json").is_file():
        raise ExportError(f"the tokenizer was saved without tokenizer.json in {folder / name}; the runtime needs it.")
    return TokenizerSpec(
        dir=name,
        model_max_length=int(min(tokenizer.model_max_length, length)),
        bos_token_id=int(tokenizer.bos_token_id if tokenizer.bos_token_id is not None else -1),
        eos_token_id=int(tokenizer.eos_token_id),
        pad_token_id=int(tokenizer.pad_token_id),
    )


def _tokenizer_specs(pipe, family, components: dict[str, ComponentSpec], folder: Path) -> dict[str, TokenizerSpec]:
    """The tokenizers of the text encoders exported, saved into ``folder``; T5's at its graph's sequence length."""
    specs = {}
    for t in family.text_encoders:
        if t.graph in components:
            length = components[t.graph].inputs[0].shape[1] if t.kind == "t5" else 77
            specs[t.tokenizer] = _tokenizer_spec(getattr(pipe, t.tokenizer), folder, t.tokenizer, length)
    return specs


def _model_facts(pipe, family) -> dict:
    """What the manifest needs from the networks' configs, read before the export frees the networks."""
    denoiser = getattr(pipe, family.denoiser)
    return {
        # A VAE that overflows in fp16 (its config's force_upcast, as SDXL's: black or NaN images) stays fp32 in an
        # fp16 export, as diffusers upcasts it.
        "vae_fp32": bool(pipe.vae.config.get("force_upcast")),
        "latent_channels": pipe.vae.config.latent_channels,
        "vae_scaling_factor": float(pipe.vae.config.scaling_factor),
        "vae_shift_factor": float(pipe.vae.config.get("shift_factor") or 0.0),
        "sample_size": denoiser.config.get("sample_size"),  # none in Flux's: the family's size
        # CLIP skip counts back from each encoder's own layer (SDXL's is the penultimate one)
        "text_layers": min(getattr(pipe, t.component).config.num_hidden_layers - (t.hidden_state != "last")
                           for t in family.text_encoders if t.kind == "clip"),
        "unet_config": {k: v for k, v in dict(denoiser.config).items() if not k.startswith("_")},
    }


def export_graph(graph: ComponentGraph, folder: Path, precision: str, size_range: tuple[int, int], scale: int,
                  validate: bool, release: Callable[[], None] | None) -> tuple[ComponentSpec, list[Check]]:
    """Trace, convert and check one graph. Its module computes in fp32 (an fp16 export loaded its weights rounded to
    fp16: what the graph will hold); ``release`` frees the network once PyTorch's part is done, before ONNX
    Runtime loads the graph."""
    t0 = time.perf_counter()
    # eval: a wrapper module is made in training mode, and torch.onnx.export puts it (and so the network) back in
    # it after tracing: T5's dropout would then randomise the reference outputs
    graph.module.float().eval()
    scratch = folder / f".trace-{graph.name}"
    scratch.mkdir()
    try:
        traced = onnx_io.trace_to_onnx(graph, _trace_shape(size_range, scale, graph.latent_multiple), scratch)
        refs = references(graph, _validation_shapes(size_range, scale)) if validate else []
        name, inputs, outputs, fp32_scopes = graph.name, graph.inputs, graph.outputs, graph.fp32_scopes
        if release:
            release()
        del graph
        gc.collect()
        memory.trim()
        file, data, digest = onnx_io.convert(traced, folder, name, precision, fp32_scopes)
    finally:
        shutil.rmtree(scratch)
    log.info("exported %s (%s) in %.1f s", name, precision, time.perf_counter() - t0)
    checks = validate_graph(name, outputs, folder / file, precision, refs) if validate else []
    return ComponentSpec(file, digest, precision, inputs, outputs, data), checks


def export(
    model: str,
    out: str | Path,
    *,
    fp16: bool = False,
    allow_pickle: bool = False,
    arch: str | None = None,
    size_range: tuple[int, int] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    validate: bool = True,
    lora: bool = True,
    controlnets: list[str] = (),
    tiny_vae: str | None = None,
    t5: bool = True,
    deep_cache: bool = False,
) -> Manifest:
    """Export ``model`` (built-in name, diffusers folder or .safetensors) to the folder ``out``.

    Each graph is validated against PyTorch at two shapes; past the tolerance the export fails
    and ``out`` is left as it was. ``lora=False`` leaves out the LoRA sites (``lora_sites``): graphs that cannot
    take LoRAs, for comparison. ``controlnets``: ControlNets to add (``PATH`` or ``NAME=PATH``, see
    ``export/controlnet.py``), each its own graph. ``tiny_vae``: a diffusers AutoencoderTiny folder (or ``random``)
    exported as the tiny decoder ``vae_decoder_tiny`` (``export/tiny_vae.py``); a built-in that ships one has it
    by default. ``t5=False`` leaves SD 3's T5 encoder out (it is not even loaded): the runtime conditions on zeros
    in its place, as diffusers does without ``text_encoder_3``. ``deep_cache``: DeepCache's shallow U-Net too
    (``export/deepcache.py``).
    """
    out = Path(out)
    started = time.perf_counter()
    named = [parse_source(s) for s in controlnets]
    need = memory.check_fits(model, fp16, () if t5 else OPTIONAL_T5)
    with memory.freed_memory_returned(bool(need and need > memory.BIG_EXPORT_BYTES)):
        return _export(model, out, fp16, allow_pickle, arch, size_range, max_batch, validate, lora, named, tiny_vae,
                       t5, deep_cache, started)


def _copy_shipped_loras(model: str, folder: Path) -> None:
    """A built-in's shipped LoRAs and their model cards into the export's LoRA folder (the runtime's default)."""
    for path in builtin.shipped_loras(model):
        folder.mkdir(exist_ok=True)
        for file in (path, path.with_suffix(".md")):
            if file.is_file():
                shutil.copyfile(file, folder / file.name)


def _export(model: str, out: Path, fp16: bool, allow_pickle: bool, arch: str | None,
            size_range: tuple[int, int] | None, max_batch: int, validate: bool, lora: bool,
            controlnets: list[tuple[str, Path]], tiny_vae: str | None, t5: bool, deep_cache: bool,
            started: float) -> Manifest:
    loaded = load_model(model, allow_pickle=allow_pickle, arch=arch, dtype=torch.float16 if fp16 else None,
                        without=() if t5 else OPTIONAL_T5)
    pipe = loaded.pipe
    scheduler_config = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    scheduler_config["_class_name"] = type(pipe.scheduler).__name__
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    text_encoder = getattr(pipe, "text_encoder", None)
    family = detect_family(type(pipe).__name__, text_encoder.config.hidden_size if text_encoder else None,
                           prediction_type)
    if not family.exportable:
        raise ExportError(f"{family.description} export is not supported yet; SD 1.x, 2.x and XL are.")
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    size_range = size_range or loaded.size_range or family.size_range
    if size_range[0] % 8 or size_range[1] % 8 or size_range[0] > size_range[1]:
        raise ExportError(f"size range {size_range} must be two multiples of 8, smallest first.")
    if deep_cache and family.denoiser != "unet":
        raise ExportError(f"--deepcache reuses a U-Net's deep features; {family.description} has a transformer. "
                          "Export it without --deepcache.")
    precision = "fp16" if fp16 else "fp32"

    facts = _model_facts(pipe, family)
    tmp = _prepare_output(out)
    try:
        components, checks = {}, []
        graphs = component_graphs(pipe, family, lora, deep_cache)
        latent_multiple = graphs[-1].latent_multiple  # the denoiser's
        tiny_vae = tiny_vae or (builtin.shipped_tiny_vae(loaded.name) if loaded.kind == "builtin" else None)
        taesd = load_tiny_vae(tiny_vae, facts["latent_channels"], scale) if tiny_vae else None  # refused before work
        while graphs:  # popped, so that a network's last graph holds the only references to it
            source, name = graphs[0].source, graphs[0].name
            keep_fp32 = graphs[0].fp32_always or (source == "vae" and facts["vae_fp32"])
            graph_precision = "fp32" if keep_fp32 else precision
            last_use = source not in {g.source for g in graphs[1:]}
            release = (lambda source=source: setattr(pipe, source, None)) if last_use else None
            components[name], graph_checks = export_graph(graphs.pop(0), tmp, graph_precision, size_range, scale,
                                                           validate, release)
            checks += graph_checks

        text = report(checks) if validate else "validation skipped (--no-validate)"
        write_text(tmp / "validation.txt", text + "\n")
        write_json(tmp / "validation.json", as_json(checks))
        failed = [c for c in checks if not c.passed]
        if failed:
            raise ExportError(
                f"{len(failed)} validation check(s) are past tolerance: the exported graphs do not match PyTorch.\n{text}"
            )

        manifest = Manifest(
            family=family.name,
            precision=precision,
            components=components,
            tokenizers=_tokenizer_specs(pipe, family, components, tmp),
            scheduler_config=scheduler_config,
            prediction_type=prediction_type,
            latent_channels=facts["latent_channels"],
            vae_scale_factor=scale,
            vae_scaling_factor=facts["vae_scaling_factor"],
            vae_shift_factor=facts["vae_shift_factor"],
            latent_multiple=latent_multiple,
            default_size=min(max(facts["sample_size"] * scale if facts["sample_size"] else family.default_size,
                                 size_range[0]), size_range[1]),
            size_range=size_range,
            max_batch=max_batch,
            model_hash=loaded.model_hash,
            source={"kind": loaded.kind, "model": loaded.name},
            tools=_tool_versions(),
            text_layers=facts["text_layers"],
            zero_empty_negative=bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False)),
            unet_config=facts["unet_config"],
            validation={"file": "validation.json", "passed": bool(checks) and not failed, "checks": len(checks),
                        "export_seconds": round(time.perf_counter() - started, 2)},
        )
        if lora and loaded.kind == "builtin":
            _copy_shipped_loras(loaded.name, tmp / "loras")
        shipped = builtin.shipped_controlnets(loaded.name) if loaded.kind == "builtin" else []
        manifest, added_checks = add_controlnets(tmp, manifest, controlnets + shipped, allow_pickle, validate)
        if taesd is not None:
            manifest, tiny_checks = add_tiny_vae(tmp, manifest, taesd, validate)
            added_checks += tiny_checks
        record_checks(tmp, added_checks)
        manifest.save(tmp)
        remember_verified(tmp, manifest)  # just written and hashed: the first load need not hash it again
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
