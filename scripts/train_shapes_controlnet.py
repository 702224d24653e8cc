#!/usr/bin/env python
"""Train ``silhouette``: a ControlNet for the built-in ``shapes`` model whose control image is the shape's
silhouette (white on black, 64x64) at the place and size the shape should be drawn, on a CPU.

  1. data     N images drawn by ``sdrt.shapes`` (every colour, shape and background the model knows), each with
              its silhouette
  2. latents  the images through the shipped VAE (posterior mean and std)
  3. train    a ControlNet made from the U-Net (its encoder copied, diffusers' ``from_unet``; the control image
              embedded down 4x to the latent), the U-Net and text encoder frozen: epsilon prediction as the base
              model was trained (min-SNR-gamma weights, captions dropped to "" now and then), AdamW with warm-up
              and cosine decay over the time cap
  4. check    prompts with silhouettes at other places and sizes (DPM++ 2M, 25 steps, guidance 5, fixed seeds), read
              back by ``sdrt.shapes.analyse``: the shape's centre against the silhouette's, its colour and background
  5. ship     (--ship) the ControlNet in fp16 (a diffusers folder) with its model card into
              sdrt/data/controlnets/shapes/silhouette/, which ``sdrt export shapes OUT`` exports as a graph

    python scripts/train_shapes_controlnet.py --out build/shapes-controlnet --ship   # ~20 minutes on 2 cores
    python scripts/train_shapes_controlnet.py --minutes 0.3 --images 300             # smoke test
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_shapes import (REPO, Log, batches, encode_latents, frozen_shapes, loop_summary, machine_info,  # noqa: E402
                          optimizer_step, min_snr_schedule, run_timed, timed_loop, to_tensor)

from sdrt import shapes  # noqa: E402

NAME = "silhouette"
SHIP_DIR = REPO / "sdrt" / "data" / "controlnets" / "shapes" / NAME
CENTRE_TOLERANCE = 4.0  # pixels between the drawn shape's centre and the silhouette's that count as "in place"
# what the check draws: (colour, shape, background), each at two places and sizes
CHECKS = (("red", "circle", "blue"), ("yellow", "square", "black"), ("green", "triangle", "white"),
          ("blue", "circle", "gray"), ("red", "square", "white"), ("yellow", "triangle", "gray"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="build/shapes-controlnet", help="output folder (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=18.0, help="training time cap (default: %(default)s)")
    p.add_argument("--images", type=int, default=6000, help="data set size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default: %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up (default: %(default)s)")
    p.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR-gamma loss weighting (default: %(default)s)")
    p.add_argument("--caption-dropout", type=float, default=0.1, help="share of empty captions (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the noise (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--ship", action="store_true", help=f"copy the ControlNet (fp16) and its card to {SHIP_DIR}")
    return p.parse_args(argv)


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images, their silhouettes and captions, over every combination the model knows."""
    combos = shapes.combinations()
    triples = [combos[i] for i in rng.integers(0, len(combos), n)]
    drawn = [shapes.draw_with_silhouette(*t, rng) for t in triples]
    return (np.stack([d[0] for d in drawn]), np.stack([d[1] for d in drawn]),
            [shapes.caption(*t) for t in triples])


def make_controlnet(unet):
    from diffusers import ControlNetModel

    levels = len(unet.config.block_out_channels)  # the control image is embedded down to the latent (4x: 3 widths)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256)[:levels])


def train(pipe, controlnet, lat_mean, lat_std, silhouettes: np.ndarray, captions: list[str], args, log: Log,
          rng: np.random.Generator) -> dict:
    import torch

    unet, text_encoder, scale = pipe.unet, pipe.text_encoder, pipe.vae.config.scaling_factor
    controlnet.train()
    unique = sorted(set(captions)) + [""]
    ids = pipe.tokenizer(unique, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        texts = text_encoder(ids)[0]  # frozen: every caption encoded once
    caption_index = torch.tensor([unique.index(c) for c in captions])
    control = (to_tensor(silhouettes) + 1) / 2  # [0, 1], as the control image processor gives it
    schedule, weights = min_snr_schedule(pipe.scheduler.config, args.snr_gamma)
    params = list(controlnet.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    order = batches(len(captions), args.batch_size, rng)

    def step(i):
        idx = torch.from_numpy(next(order))
        z = (lat_mean[idx] + lat_std[idx] * torch.randn_like(lat_mean[idx])) * scale
        caps = caption_index[idx].clone()
        caps[torch.rand(len(idx)) < args.caption_dropout] = len(unique) - 1
        noise = torch.randn_like(z)
        t = torch.randint(0, schedule.config.num_train_timesteps, (len(idx),))
        noisy, text = schedule.add_noise(z, noise, t), texts[caps]
        down, mid = controlnet(noisy, t, text, control[idx], return_dict=False)
        pred = unet(noisy, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        loss = (weights[t] * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        return optimizer_step(opt, loss, params)

    steps, seconds, losses = timed_loop("controlnet", args.minutes * 60, step, opt, args.lr, args.warmup_steps, log)
    controlnet.eval()
    return loop_summary(steps, seconds, losses, args.batch_size, params)


def check_placements(seed: int = 123) -> list[tuple[tuple[str, str, str], np.ndarray, np.ndarray]]:
    """Each check's triple, silhouette and the drawing it asks for, at a place and size of its own."""
    rng = np.random.default_rng(seed)
    return [(t, *shapes.draw_with_silhouette(*t, rng)[::-1]) for t in CHECKS]


def check(pipe, controlnet, out: Path) -> dict:
    """Prompts with silhouettes, read back: in place (centre within CENTRE_TOLERANCE px), right colour and background."""
    import diffusers
    import torch
    from PIL import Image

    cn_pipe = diffusers.StableDiffusionControlNetPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config), controlnet=controlnet,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    cn_pipe.set_progress_bar_config(disable=True)
    results, images, labels = [], [], []
    for i, (triple, silhouette, _) in enumerate(check_placements()):
        image = cn_pipe(shapes.caption(*triple), image=Image.fromarray(silhouette), num_inference_steps=25,
                        guidance_scale=5.0, generator=torch.Generator().manual_seed(1 + i), output_type="np").images[0]
        image = (image * 255).round().clip(0, 255).astype(np.uint8)
        got, want = shapes.analyse(image), shapes.analyse(silhouette)
        offset = None if got.centre is None else float(np.hypot(*np.subtract(got.centre, want.centre)))
        placed = offset is not None and offset <= CENTRE_TOLERANCE
        right = placed and got.reading.colour == triple[0] and got.reading.background == triple[2]
        results.append({"triple": triple, "read": list(got.reading), "offset_px": offset, "right": right})
        images += [silhouette, image]
        labels += [["silhouette"], [" ".join(triple), "read: " + " ".join(p or "?" for p in got.reading),
                                    f"offset {offset:.1f} px" if offset is not None else "no shape"]]
    shapes.contact_sheet(images, labels, columns=4, scale=3).save(out / "check.png")
    return {"right": sum(r["right"] for r in results), "total": len(results), "results": results}


def save(controlnet, folder: Path) -> None:
    import torch

    if folder.exists():
        shutil.rmtree(folder)
    controlnet.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    controlnet.to(torch.float32)


def model_card(r: dict) -> str:
    a, m, t, c = r["args"], r["machine"], r["training"], r["check"]
    return f"""# {NAME}

A ControlNet for the built-in `shapes` model: its control image is the shape's silhouette (white on black, 64x64)
at the place and size the shape should be drawn. The prompt says the colour, the shape and the background
(`a red circle on a blue background`); the silhouette says where.

- Trained by `scripts/train_shapes_controlnet.py` (`make train-shapes-controlnet`) from seed {a['seed']}: {a['images']}
  images drawn by `sdrt.shapes` with their silhouettes (every colour, shape and background the model knows); the
  ControlNet made from the U-Net's encoder (diffusers' `from_unet`, {t['trained_parameters']:,} parameters), the U-Net
  and text encoder frozen; {t['steps']} steps of batch {t['batch_size']} in {t['seconds'] / 60:.1f} minutes, loss
  {t['first_loss']:.4f} → {t['final_loss']:.4f}.
- Machine: {m['cpu']} ({m['cores']} cores; {m['cpu_flags']}), torch {m['torch']}, diffusers {m['diffusers']}.
- Check (DPM++ 2M, 25 steps, guidance 5, seeds 1–{c['total']}, silhouettes at other places and sizes, read back by
  `sdrt.shapes.analyse`): {c['right']}/{c['total']} drawn with their centre within {CENTRE_TOLERANCE:g} px of the
  silhouette's, in the prompt's colour on its background.
- Stored in fp16 as a diffusers ControlNet folder; `sdrt export shapes OUT` exports it as `controlnet.{NAME}`.
"""


def main(argv=None) -> int:
    args = parse_args(argv)
    out, rng, log, pipe = frozen_shapes(args)
    images, silhouettes, captions = make_data(args.images, rng)
    lat_mean, lat_std = encode_latents(pipe.vae, images)
    controlnet = make_controlnet(pipe.unet)
    report = {"args": vars(args), "machine": machine_info(),
              "training": train(pipe, controlnet, lat_mean, lat_std, silhouettes, captions, args, log, rng)}
    report["check"] = check(pipe, controlnet, out)
    log(json.dumps({k: v for k, v in report["check"].items() if k != "results"}), echo=True)
    save(controlnet, out / NAME)
    (out / NAME / "README.md").write_text(model_card(report), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    if args.ship:
        if SHIP_DIR.exists():
            shutil.rmtree(SHIP_DIR)
        shutil.copytree(out / NAME, SHIP_DIR)
        for f in SHIP_DIR.iterdir():
            f.chmod(0o644)
        print(f"shipped {NAME} to {SHIP_DIR}")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_timed(main))
