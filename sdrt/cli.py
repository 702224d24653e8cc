"""``sdrt export|build|generate|bench|serve|quantize|info``: parses arguments, calls the Python API, prints results.

Errors sdrt raises on purpose are printed as one message (no traceback) with a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .errors import SdrtError

log = logging.getLogger("sdrt")


def _size_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX in pixels (e.g. 256,1024), got {text!r}") from None
    return lo, hi


def _margins(text: str) -> tuple[int, int, int, int]:
    try:
        left, top, right, bottom = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LEFT,TOP,RIGHT,BOTTOM in pixels (e.g. 0,0,64,0), got {text!r}") from None
    return left, top, right, bottom


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export

    started = time.perf_counter()
    manifest = export(
        args.model,
        args.out,
        fp16=args.fp16,
        allow_pickle=args.allow_pickle,
        arch=args.arch,
        size_range=args.size_range,
        max_batch=args.max_batch,
        lora=not args.no_lora,
        t5=not args.no_t5,
        controlnets=args.controlnet,
        tiny_vae=args.tiny_vae,
        deep_cache=args.deepcache,
    )
    print((Path(args.out) / "validation.txt").read_text(), end="")
    print(f"exported {args.model} ({manifest.family}, {manifest.precision}) to {args.out} "
          f"in {time.perf_counter() - started:.1f} s")


def cmd_add_tiny_vae(args: argparse.Namespace) -> None:
    from .export.tiny_vae import add_to_export

    started = time.perf_counter()
    add_to_export(args.folder, args.source)
    print(f"added the tiny VAE decoder of {args.source} to {args.folder} in {time.perf_counter() - started:.1f} s")


def cmd_add_controlnet(args: argparse.Namespace) -> None:
    from .components import controlnet_names
    from .export.controlnet import add_to_export

    started = time.perf_counter()
    manifest = add_to_export(args.folder, args.controlnet, allow_pickle=args.allow_pickle)
    print(f"{args.folder} has the ControlNets {', '.join(controlnet_names(manifest))} "
          f"({time.perf_counter() - started:.1f} s)")


def _control_images(args: argparse.Namespace) -> list | None:
    """The control images, through ``--control-preprocessor``."""
    if not args.control_image:
        return None
    from .runtime.images import load_image
    from .runtime.preprocessors import preprocess

    return [preprocess(args.control_preprocessor, load_image(path, "control image")) for path in args.control_image]


def _one_or_list(values: list[float], default: float):
    return default if not values else values[0] if len(values) == 1 else values


def cmd_generate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .runtime import Pipeline

    bar = None

    def progress(step: int, total: int) -> None:
        nonlocal bar  # made on the first step, so a rejected request shows no bar
        bar = bar or tqdm(total=total, desc="denoising", unit="step", disable=args.quiet)
        bar.update(1)

    backend = ":".join([args.backend] + ([args.precision] if args.precision else []) + ([args.weights] if args.weights else []))
    with Pipeline.load(args.folder, backend=backend, refiner=args.refiner, lora_dir=args.lora_dir,
                       embeddings_dir=args.embeddings_dir, allow_pickle=args.allow_pickle) as pipe:
        print(f"backend: {pipe.backend.name} on {pipe.backend.device}")
        try:
            result = pipe(
                prompt=args.prompt,
                negative_prompt=args.negative_prompt,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                true_cfg_scale=args.true_cfg,
                height=args.height,
                width=args.width,
                seed=args.seed,
                scheduler=args.sampler,
                num_images=args.batch,
                callback=progress,
                noise=args.noise,
                image=args.init_image,
                mask_image=args.mask,
                strength=args.strength,
                outpaint=args.outpaint,
                inpaint_mode=args.inpaint_mode,
                weighting=not args.no_weighting,
                eta=args.eta,
                s_noise=args.s_noise,
                clip_skip=args.clip_skip,
                prompt_2=args.prompt_2,
                negative_prompt_2=args.negative_prompt_2,
                prompt_3=args.prompt_3,
                negative_prompt_3=args.negative_prompt_3,
                refiner_switch_at=args.refiner_switch_at if args.refiner else None,
                loras=dict(args.lora),
                control_image=_control_images(args),
                controlnet=_one_or_list(args.controlnet, None),
                controlnet_conditioning_scale=_one_or_list(args.control_scale, 1.0),
                control_guidance_start=_one_or_list(args.control_start, 0.0),
                control_guidance_end=_one_or_list(args.control_end, 1.0),
                guess_mode=args.guess_mode,
                vae=args.vae,
                deepcache_interval=args.deepcache,
            )
        finally:
            if bar is not None:
                bar.close()
    for path in result.save(args.out):
        print(f"wrote {path}")
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
    print(f"seed {result.seed}; {stages}")


def _lora(text: str) -> tuple[str, float]:
    """``FILE_OR_NAME[:WEIGHT]`` (weight 1 when omitted)."""
    name, _, weight = text.rpartition(":") if ":" in text else (text, "", "1")
    try:
        return name, float(weight)
    except ValueError:
        return text, 1.0  # a colon in the name itself


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas (e.g. 256,512), got {text!r}") from None


def cmd_bench(args: argparse.Namespace) -> None:
    from .benchmarks.bench import BenchOptions, run_bench
    from .benchmarks.report import write_report

    addon = next((kind for kind in ("lora", "controlnet", "preview", "deepcache") if getattr(args, kind)), None)
    if addon:
        return _bench_addon(args, addon)
    opts = BenchOptions(
        models=tuple(args.model), backends=tuple(args.backends.split(",")), sizes=args.sizes, batches=args.batches,
        steps=args.steps, sampler=args.sampler, guidance=args.guidance, precision=args.precision, warmup=args.warmup,
        repeats=args.repeats, work_dir=Path(args.work_dir), probes=not args.no_probes, quality=args.quality,
        one_at_a_time=args.one_at_a_time, peers=tuple(p for p in args.peers.split(",") if p),
    )
    report, images = run_bench(opts, log=lambda msg: print(msg, flush=True))
    path = write_report(report, images, Path(args.out))
    print(f"wrote {path} (and report.json, plots) in {args.out}")


def _bench_addon(args: argparse.Namespace, kind: str) -> None:
    """``sdrt bench --lora`` / ``--controlnet`` / ``--preview`` / ``--deepcache``: what the add-on costs (``benchmarks/KIND.py``) on
    the first model and size, written as KIND.json and KIND.md after each backend."""
    import importlib

    from .fileio import write_json, write_text

    module = importlib.import_module(f".benchmarks.{kind}", __package__)
    opts = module.OPTIONS(model=args.model[0], backends=tuple(b for b in args.backends.split(",") if b != "torch"),
                          size=args.sizes[0], steps=args.steps, warmup=args.warmup, repeats=args.repeats,
                          sampler=args.sampler, work_dir=Path(args.work_dir))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def write(report: dict) -> None:
        write_json(out / f"{kind}.json", report)
        write_text(out / f"{kind}.md", module.text(report) + "\n")

    print(module.text(module.BENCH(opts, log=lambda msg: print(msg, flush=True), done=write)))
    print(f"wrote {out / kind}.md and {kind}.json")


def cmd_build(args: argparse.Namespace) -> None:
    from .engines import build, dynamic_profile, static_profile
    from .engines.profiles import parse_size
    from .errors import UserInputError

    ranges = [args.min, args.opt, args.max]
    if any(ranges) and not all(ranges):
        raise UserInputError("a dynamic profile needs all of --min, --opt and --max (BATCHxHEIGHTxWIDTH)")
    tokens = {"max_tokens": args.max_tokens} if args.max_tokens else {}  # else each kind's own default
    profiles = [static_profile(*parse_size(size), batch=args.batch, **tokens) for size in args.static]
    if all(ranges):
        profiles.append(dynamic_profile(args.min, args.opt, args.max, **tokens))
    components = tuple(c.strip() for c in args.components.split(",")) if args.components else None
    outcomes = build(args.folder, args.backend, profiles or None, compute_capabilities=args.compute_capability,
                     components=components, refit=args.refit, cleanup=not args.no_cleanup, force=args.force)
    for o in outcomes:
        took = f"in {o.seconds:.1f} s" if o.status != "cached" else "(cache hit)"
        print(f"{o.component:<13} {o.status:<8} {took:<11} {o.bytes / 1e6:7.1f} MB  {o.file}")


def cmd_serve(args: argparse.Namespace) -> None:
    from .errors import UserInputError
    from .manifest import load_manifest

    try:
        from .serve import Limits, ServeOptions, create_app, parse_credentials
    except ImportError as e:
        raise UserInputError(f"sdrt serve needs its extra: pip install 'sdrt[serve]' ({e})") from None
    load_manifest(args.folder)  # a bad folder fails here, in one line, not inside the server
    options = ServeOptions(backend=args.backend, max_batch=args.max_batch, max_queue=args.max_queue,
                           timeout=args.timeout, refiner=args.refiner, lora_dir=args.lora_dir,
                           embeddings_dir=args.embeddings_dir, preview_every=args.preview_every)
    limits = Limits(args.max_pixels, args.max_steps, args.max_images, args.max_body_bytes, args.max_prompt_chars)
    credentials = parse_credentials(args.api_auth)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not credentials:
        log.warning("serving on %s without --api-auth: anyone who can reach it can use it", args.host)
    if args.ray:
        import ray
        from ray import serve

        from .serve.ray_app import deployment

        ray.init(address=args.ray_address, ignore_reinit_error=True)
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(deployment(str(args.folder), options, limits, credentials, replicas=args.replicas,
                             max_replicas=args.max_replicas), route_prefix="/")
        print(f"sdrt serving {args.folder} on Ray Serve at http://{args.host}:{args.port}/ ({args.replicas} "
              "replica(s)): the page there, the API under /sdapi/v1/; Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        finally:
            serve.shutdown()
        return
    import uvicorn

    app = create_app(args.folder, options, limits, credentials)
    print(f"sdrt serving {args.folder}: open http://{args.host}:{args.port}/ in a browser, or use the API at "
          f"http://{args.host}:{args.port}/sdapi/v1/; Ctrl-C stops", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def cmd_quantize(args: argparse.Namespace) -> None:
    from .errors import UserInputError
    from .runtime.quantize import CALIBRATION_PROMPTS, quantize

    prompts = CALIBRATION_PROMPTS
    if args.prompts:
        if not Path(args.prompts).is_file():
            raise UserInputError(f"no prompts file {args.prompts}: give a text file with one prompt per line")
        prompts = tuple(p for p in Path(args.prompts).read_text().splitlines() if p.strip())
    path = quantize(args.folder, prompts, size=args.size, steps=args.steps, log=lambda msg: print(msg, flush=True))
    print(f"wrote {path}; generate with --backend openvino:bf16:w8a8")


def cmd_info(args: argparse.Namespace) -> None:
    from .manifest import load_manifest

    m = load_manifest(args.folder)
    print(f"{args.folder}: {m.family}, {m.precision}, model hash {m.model_hash}, source {m.source}")
    print(f"sizes {m.size_range[0]}..{m.size_range[1]} px (default {m.default_size}), batch up to {m.max_batch}, "
          f"prediction {m.prediction_type}, scheduler {m.scheduler_config.get('_class_name')}")
    for name, c in m.components.items():
        print(f"  {name:<13} {c.file:<20} {c.precision}  " + ", ".join(f"{t.name}{list(t.shape)}" for t in c.inputs))
    from .engines.profiles import Profile

    for r in sorted(m.engines.values(), key=lambda r: (r["flavour"], r["component"], r["file"])):
        print(f"  engine {r['component']:<13} {r['flavour']} {r['version']} sm {','.join(r['targets'])}: "
              f"{Profile.from_json(r['profile']).describe()}, {r['bytes'] / 1e6:.1f} MB, built in {r['build_seconds']} s")


def build_parser() -> argparse.ArgumentParser:
    from .export.builtin import BUILTIN_MODELS
    from .manifest import DEFAULT_MAX_BATCH
    from .runtime.request import INPAINT_MODES
    from .runtime.schedulers import SCHEDULER_NAMES

    parser = argparse.ArgumentParser(prog="sdrt", description="Optimized Stable Diffusion inference runtime.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a pipeline to ONNX and validate it against PyTorch")
    p.add_argument("model", help=f"built-in name ({', '.join(BUILTIN_MODELS)}), diffusers folder, or .safetensors")
    p.add_argument("out", help="output folder")
    p.add_argument("--fp16", action="store_true", help="write fp16 graphs (weights and compute)")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints (.ckpt/.bin): they can run code")
    p.add_argument("--no-lora", action="store_true", help="graphs without LoRA inputs (they cannot take LoRAs)")
    p.add_argument("--no-t5", action="store_true",
                   help="SD 3: leave the T5 encoder out (zeros in its place, as diffusers allows): much less memory")
    p.add_argument("--arch", help="architecture of a .safetensors checkpoint when its keys cannot tell (sd15, sd21, tiny, …)")
    p.add_argument("--size-range", type=_size_range, metavar="MIN,MAX", help="image sides in pixels the export supports")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help=f"largest number of images per call (default {DEFAULT_MAX_BATCH})")
    p.add_argument("--controlnet", action="append", default=[], metavar="[NAME=]PATH",
                   help="add a ControlNet (diffusers folder or .safetensors file; repeatable)")
    p.add_argument("--tiny-vae", metavar="PATH|random",
                   help="a tiny VAE decoder for live previews and --vae tiny: a diffusers AutoencoderTiny folder "
                        "(madebyollin/taesd for SD 1.x/2.x, taesdxl for SDXL) or 'random' (built-ins that ship one "
                        "have it)")
    p.add_argument("--deepcache", action="store_true",
                   help="also export DeepCache's shallow U-Net: `generate --deepcache N` then reuses the U-Net's deep "
                        "features N-1 steps in N (SD 1.x/2.x/XL)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("add-controlnet", help="add ControlNets to an export folder (the base is not exported again)")
    p.add_argument("folder", help="export folder (from sdrt export)")
    p.add_argument("controlnet", nargs="+", metavar="[NAME=]PATH", help="diffusers ControlNet folder or .safetensors file")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle files (.pth/.bin): they can run code")
    p.set_defaults(func=cmd_add_controlnet)

    p = sub.add_parser("add-tiny-vae", help="add a tiny VAE decoder to an export folder (previews, --vae tiny)")
    p.add_argument("folder", help="export folder (from sdrt export)")
    p.add_argument("source", metavar="PATH|random",
                   help="a diffusers AutoencoderTiny folder (madebyollin/taesd, taesdxl) or 'random'")
    p.set_defaults(func=cmd_add_tiny_vae)

    p = sub.add_parser("build", help="build TensorRT engines (fp16 from --fp16 exports) for an export folder",
                       description="One engine per component and profile into FOLDER/engines, cached by content: "
                                   "an unchanged model, TensorRT, target and profile is never rebuilt.")
    p.add_argument("folder", help="export folder (from sdrt export)")
    p.add_argument("--backend", choices=("tensorrt", "tensorrt-rtx"), default="tensorrt-rtx",
                   help="TensorRT flavour (default tensorrt-rtx: TensorRT for RTX, builds without a GPU)")
    p.add_argument("--static", action="append", default=[], metavar="HEIGHTxWIDTH",
                   help="a static profile (repeatable); with --batch")
    p.add_argument("--batch", type=int, default=1, help="images per call of the static profiles (default 1); "
                   "the U-Net's doubling for guidance is added for you")
    p.add_argument("--min", metavar="BxHxW", help="dynamic profile: smallest batch x height x width, e.g. 1x256x256")
    p.add_argument("--opt", metavar="BxHxW", help="dynamic profile: the shape to tune for, e.g. 1x512x512")
    p.add_argument("--max", metavar="BxHxW", help="dynamic profile: largest, e.g. 4x768x768")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="longest prompt in tokens (75 per chunk; default 75 static, 150 dynamic)")
    p.add_argument("--compute-capability", metavar="CC[,CC]",
                   help="tensorrt-rtx: build ahead of time for these GPUs, e.g. 8.6,8.9 (default: the local GPU)")
    p.add_argument("--components", metavar="NAME[,NAME]", help="only these (text_encoder, unet, vae_decoder, vae_encoder)")
    p.add_argument("--refit", action="store_true", help="refittable engines (weights swappable later, e.g. LoRA)")
    p.add_argument("--no-cleanup", action="store_true", help="skip constant folding and clean-up of the graphs")
    p.add_argument("--force", action="store_true", help="rebuild even where the cache has the engine")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("generate", help="generate images from an export folder")
    p.add_argument("folder", help="export folder (from sdrt export)")
    p.add_argument("--prompt", required=True, help="AUTOMATIC1111 syntax: (word:1.3), (word), [word], BREAK; any length")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--prompt-2", default=None,
                   help="SDXL, SD 3: the second text encoder's prompt; Flux: T5's (default: --prompt)")
    p.add_argument("--negative-prompt-2", default=None, help="SDXL: the second text encoder's negative prompt")
    p.add_argument("--prompt-3", default=None, help="SD 3: T5's prompt (default: --prompt; Flux's T5 reads --prompt-2)")
    p.add_argument("--negative-prompt-3", default=None, help="SD 3: T5's negative prompt")
    p.add_argument("--refiner", metavar="OUT", help="SDXL: the export of a refiner that takes over the schedule's end")
    p.add_argument("--refiner-switch-at", type=float, default=0.8,
                   help="with --refiner: the fraction of the schedule the base runs (default 0.8)")
    p.add_argument("--no-weighting", action="store_true", help="read brackets in prompts as plain text (as diffusers)")
    p.add_argument("--lora", action="append", type=_lora, default=[], metavar="FILE_OR_NAME[:WEIGHT]",
                   help="apply a LoRA (repeatable; a name is looked up in --lora-dir); prompts take <lora:NAME:WEIGHT> too")
    p.add_argument("--lora-dir", default=None, help="where LoRA names are looked up (default: the export's loras/)")
    p.add_argument("--embeddings-dir", default=None,
                   help="textual-inversion embeddings, used by their name in prompts (default: the export's embeddings/)")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle LoRA and embedding files (.pt, .bin): they can run code")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the family's: 7.5, SD 3: 7; Flux: its distilled "
                        "guidance, 3.5)")
    p.add_argument("--true-cfg", type=float, default=1.0,
                   help="Flux: classifier-free guidance scale, run when --negative-prompt is given (default 1: none)")
    p.add_argument("--seed", type=int, default=None, help="random when omitted (printed)")
    p.add_argument("--width", type=int, default=None, help="multiple of 8; default the model's native size")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--sampler", default=None, help=f"{', '.join(SCHEDULER_NAMES)} (default: the model's own)")
    p.add_argument("--batch", type=int, default=1, help="images per prompt")
    p.add_argument("--eta", type=float, default=None,
                   help="η: DDIM's (default 0) or the noise scale of Euler a and DPM++ SDE (default 1); others ignore it")
    p.add_argument("--s-noise", type=float, default=None, help="scale of the fresh noise of Euler a and DPM++ SDE (default 1)")
    p.add_argument("--clip-skip", type=int, default=1,
                   help="AUTOMATIC1111's CLIP skip: 1 = the last text encoder layer (default), 2 = the penultimate")
    p.add_argument("--noise", choices=("torch", "numpy"), default="torch",
                   help="torch: the noise diffusers draws for the seed (default); numpy: numpy's generator")
    p.add_argument("--init-image", metavar="PATH", help="img2img: start from this image (size defaults to its own)")
    p.add_argument("--strength", type=float, default=None,
                   help="img2img/inpainting: how much of the schedule runs, 0..1 (default 0.8 img2img, 1 inpainting)")
    p.add_argument("--mask", metavar="PATH", help="inpainting: white = repaint, black = keep (needs --init-image)")
    p.add_argument("--outpaint", type=_margins, metavar="L,T,R,B",
                   help="outpainting: grow --init-image by these pixels and paint the new area")
    p.add_argument("--inpaint-mode", choices=INPAINT_MODES, default="auto",
                   help="model: an inpainting U-Net; blend: latent blending with any model; auto: what the model has")
    p.add_argument("--control-image", action="append", default=[], metavar="PATH",
                   help="ControlNet: the control image (one per --controlnet; repeatable)")
    p.add_argument("--controlnet", action="append", default=[], metavar="NAME",
                   help="the export's ControlNet to use (repeatable; optional when it has one)")
    p.add_argument("--control-preprocessor", choices=("none", "canny"), default="none",
                   help="make the control maps from the images first (default none: they are maps)")
    p.add_argument("--control-scale", action="append", type=float, default=[], metavar="W",
                   help="ControlNet weight (default 1; one, or one per ControlNet)")
    p.add_argument("--control-start", action="append", type=float, default=[], metavar="F",
                   help="fraction of the schedule where control starts (default 0)")
    p.add_argument("--control-end", action="append", type=float, default=[], metavar="F",
                   help="fraction of the schedule where control ends (default 1)")
    p.add_argument("--guess-mode", action="store_true", help="ControlNet guess mode (diffusers')")
    p.add_argument("--vae", choices=("full", "tiny"), default="full",
                   help="the decoder: the model's VAE, or the export's tiny VAE (sdrt export --tiny-vae; cheaper)")
    p.add_argument("--deepcache", type=int, default=1, metavar="N",
                   help="reuse the U-Net's deep features: the whole U-Net every N-th step only (an export made with "
                        "--deepcache; default 1: every step)")
    p.add_argument("--backend", default="onnxruntime",
                   help="onnxruntime, openvino (CPU fast path), tensorrt or tensorrt-rtx (GPU engines from sdrt build; "
                        "':auto-build' builds missing ones) or auto (the fastest here); default onnxruntime")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="openvino compute precision: fp32 (exact, default) or bf16 (where the CPU has it)")
    p.add_argument("--weights", choices=("int8",), default=None,
                   help="openvino: int8 weights (NNCF weight compression; smaller, approximate, see the README)")
    p.add_argument("--out", default="sdrt.png", help="PNG path; a batch writes NAME-0.png, NAME-1.png, …")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("bench", help="latency, memory and parity of the backends against diffusers (torch)")
    p.add_argument("--model", nargs="+", default=["tiny"], help="built-in names or export folders (default: tiny)")
    p.add_argument("--backends", default="torch,onnxruntime",
                   help="comma-separated: torch (the reference), onnxruntime, openvino, openvino:bf16, "
                        "openvino:bf16:int8 (int8 weights), openvino:bf16:w8a8 (int8 compute, after sdrt quantize), "
                        "auto")
    p.add_argument("--sizes", type=_ints, default=(256,), help="square image sides, comma-separated (default 256)")
    p.add_argument("--batches", type=_ints, default=(1,), help="images per call, comma-separated (default 1)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sampler", default="dpm++2m")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="of the exported graphs")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-probes", action="store_true", help="skip time to first image and peak memory (fresh processes)")
    p.add_argument("--lora", action="store_true",
                   help="what LoRAs cost instead: graphs with and without LoRA sites, a random LoRA, switching, memory "
                        "(first --model, first --sizes; --steps 20 for the issue's targets)")
    p.add_argument("--controlnet", action="store_true",
                   help="what one ControlNet costs a step instead: FLOPs, time split U-Net / ControlNet, peak memory "
                        "(first --model, first --sizes; a random ControlNet of the model's architecture)")
    p.add_argument("--preview", action="store_true",
                   help="what live previews (sdrt serve's current_image) cost a step: a preview wanted at every step "
                        "against none (first --model, first --sizes)")
    p.add_argument("--deepcache", action="store_true",
                   help="what reusing the U-Net's deep features saves and costs instead: DeepCache intervals 1, 2, 3, "
                        "5, time and images against interval 1 (first --model, first --sizes; an export with "
                        "--deepcache is made)")
    p.add_argument("--one-at-a-time", action="store_true",
                   help="load and run one backend after the other instead of all together, interleaved: for models "
                        "two backends cannot hold at once (sdxl-arch in 24 GB)")
    p.add_argument("--peers", default="",
                   help="comma-separated CPU peers run beside the backends, each installed on demand into its own "
                        "environment under WORK_DIR/peers: optimum-intel, openvino-genai, sdcpp (stable-diffusion.cpp, "
                        "built from source); PEER:bf16, PEER:static pick a configuration, a bare name one per "
                        "precision class of the backends")
    p.add_argument("--quality", action="store_true",
                   help="add adherence and fp16-vs-fp32 image similarity on the trained shapes model")
    p.add_argument("--work-dir", default="build/bench", help="where exports made for the benchmark go")
    p.add_argument("--out", default="build/bench/report", help="report folder")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("serve", help="an AUTOMATIC1111-compatible HTTP API over an export folder",
                       description="Binds 127.0.0.1 by default; put TLS in a reverse proxy in front of it.")
    p.add_argument("folder", help="export folder (from sdrt export)")
    p.add_argument("--backend", default="onnxruntime", help="as sdrt generate: onnxruntime, openvino[:bf16], tensorrt…, auto")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860, help="default 7860, as the WebUI")
    p.add_argument("--max-batch", type=int, default=4, help="images per joined U-Net batch (default 4)")
    p.add_argument("--refiner", metavar="OUT", help="SDXL: a refiner's export, for requests' refiner_checkpoint")
    p.add_argument("--lora-dir", default=None, help="LoRAs for prompts' <lora:NAME:WEIGHT> (default: the export's loras/)")
    p.add_argument("--embeddings-dir", default=None,
                   help="textual inversions prompts name (default: the export's embeddings/)")
    p.add_argument("--preview-every", type=int, default=5, metavar="N",
                   help="a live preview in /sdapi/v1/progress every N steps while a client watches, within 4%% of "
                        "the loop's time (default 5; 0: none)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting before 503 (default 64)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take, waiting included (504)")
    p.add_argument("--api-auth", metavar="USER:PASSWORD[,…]", help="HTTP Basic credentials, as the WebUI's --api-auth")
    p.add_argument("--max-pixels", type=int, default=1024 * 1024, help="width x height of one image")
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--max-images", type=int, default=8, help="batch_size x n_iter of one request")
    p.add_argument("--max-body-bytes", type=int, default=20 * 1024 * 1024)
    p.add_argument("--max-prompt-chars", type=int, default=4000)
    p.add_argument("--ray", action="store_true", help="run as Ray Serve replicas (pip install 'sdrt[ray]')")
    p.add_argument("--replicas", default="1", help="Ray replicas: a number, or auto (autoscaling)")
    p.add_argument("--max-replicas", type=int, default=None, help="upper bound with --replicas auto")
    p.add_argument("--ray-address", default=None, help="a Ray cluster to join (default: RAY_ADDRESS, or a local Ray)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("quantize", help="int8 compute for the U-Net on OpenVINO (then --backend openvino:bf16:w8a8)",
                       description="Calibrates NNCF's post-training quantization on a few generations and writes "
                                   "the U-Net with int8 convolutions and int8 linear weights to OUT/quantized/.")
    p.add_argument("folder", help="export folder (SD 1.x, 2.x, SDXL)")
    p.add_argument("--prompts", help="a text file, one calibration prompt per line (default: 8 varied prompts)")
    p.add_argument("--size", type=int, help="calibration image side (default: the model's)")
    p.add_argument("--steps", type=int, default=10, help="steps per calibration prompt (default 10)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("info", help="describe an export folder")
    p.add_argument("folder")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not log.handlers:  # sdrt's own messages only: libraries keep their defaults
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("sdrt: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    log.propagate = False
    try:
        args.func(args)
    except SdrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
