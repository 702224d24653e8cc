"""``sdrt export``: load a pipeline, export its four graphs, validate them, write the export folder."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import ExportError
from ..components import VAE_DECODER, VAE_ENCODER
from ..families import detect_family
from ..manifest import DEFAULT_MAX_BATCH, MANIFEST_NAME, ComponentSpec, Manifest, TokenizerSpec
from ..fileio import write_json, write_text
from . import onnx_io
from .graphs import Shape, component_graphs
from .sources import load_model
from .validate import as_json, report, validate_graph

log = logging.getLogger("sdrt.export")


def _validation_shapes(size_range: tuple[int, int], scale: int) -> list[Shape]:
    """Two shapes unlike the traced one: square batch 1, and non-square batch 2 (64x64 and 48x80
    latents, kept inside the declared range)."""
    lo, hi = size_range[0] // scale, size_range[1] // scale

    def clip(v: int) -> int:
        return max(lo, min(hi, v))

    return [Shape(1, clip(64), clip(64)), Shape(2, clip(48), clip(80))]


def _trace_shape(size_range: tuple[int, int], scale: int) -> Shape:
    # An odd latent size makes diffusers' U-Net take its explicit-upsample-size path, so the traced
    # graph sizes each upsampling from its skip connection and works at every latent size, not only
    # multiples of the U-Net's total downsampling factor.
    side = max(size_range[0] // scale, min(size_range[1] // scale, 33))
    return Shape(1, side | 1, (side + 2) | 1)


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


def _tokenizer_spec(tokenizer, folder: Path, name: str) -> TokenizerSpec:
    tokenizer.save_pretrained(folder / name)
    if not (folder / name / "tokenizer.json").is_file():
        raise ExportError(f"the tokenizer was saved without tokenizer.json in {folder / name}; the runtime needs it.")
    return TokenizerSpec(
        dir=name,
        model_max_length=int(min(tokenizer.model_max_length, 77)),
        bos_token_id=int(tokenizer.bos_token_id),
        eos_token_id=int(tokenizer.eos_token_id),
        pad_token_id=int(tokenizer.pad_token_id),
    )


def _graph_precision(name: str, pipe, precision: str) -> str:
    """A graph's precision: the export's, except a VAE that overflows in fp16 (its config's ``force_upcast``, as
    SDXL's: black or NaN images), which stays fp32, as diffusers upcasts it."""
    if precision == "fp16" and name in (VAE_DECODER.name, VAE_ENCODER.name) and pipe.vae.config.get("force_upcast"):
        return "fp32"
    return precision


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
) -> Manifest:
    """Export ``model`` (built-in name, diffusers folder or .safetensors) to the folder ``out``.

    Each graph is validated against PyTorch at two shapes; past the tolerance the export fails
    and ``out`` is left as it was.
    """
    out = Path(out)
    started = time.perf_counter()
    loaded = load_model(model, allow_pickle=allow_pickle, arch=arch)
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
    precision = "fp16" if fp16 else "fp32"

    tmp = _prepare_output(out)
    try:
        components, checks = {}, []
        for graph in component_graphs(pipe, family):
            t0 = time.perf_counter()
            graph_precision = _graph_precision(graph.name, pipe, precision)
            proto = onnx_io.trace_to_onnx(graph, _trace_shape(size_range, scale))
            if graph_precision == "fp16":
                proto = onnx_io.to_fp16(proto, graph)
            file, data, digest = onnx_io.save(proto, tmp, graph.name)
            del proto
            components[graph.name] = ComponentSpec(file, digest, graph_precision, graph.inputs, graph.outputs, data)
            log.info("exported %s (%s) in %.1f s", graph.name, graph_precision, time.perf_counter() - t0)
            if validate:
                checks += validate_graph(graph, tmp / file, graph_precision, _validation_shapes(size_range, scale))

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
            tokenizers={t.tokenizer: _tokenizer_spec(getattr(pipe, t.tokenizer), tmp, t.tokenizer)
                        for t in family.text_encoders},
            scheduler_config=scheduler_config,
            prediction_type=prediction_type,
            latent_channels=pipe.vae.config.latent_channels,
            vae_scale_factor=scale,
            vae_scaling_factor=float(pipe.vae.config.scaling_factor),
            default_size=min(max(pipe.unet.config.sample_size * scale, size_range[0]), size_range[1]),
            size_range=size_range,
            max_batch=max_batch,
            model_hash=loaded.model_hash,
            source={"kind": loaded.kind, "model": loaded.name},
            tools=_tool_versions(),
            # CLIP skip counts back from each encoder's own layer (SDXL's is the penultimate one)
            text_layers=min(getattr(pipe, t.component).config.num_hidden_layers - (t.hidden_state != "last")
                            for t in family.text_encoders),
            zero_empty_negative=bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False)),
            validation={"file": "validation.json", "passed": bool(checks) and not failed, "checks": len(checks),
                        "export_seconds": round(time.perf_counter() - started, 2)},
        )
        manifest.save(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
