#!/usr/bin/env python
"""Train the tiny VAE decoder of the built-in ``shapes`` model (diffusers' ``AutoencoderTiny``, TAESD's
architecture, made small), on a CPU, by distilling the shipped VAE decoder.

  1. data     N images drawn by ``sdrt.shapes``, through the shipped VAE encoder: latents sampled from the posterior
              (scaled as the U-Net sees them), some blended with noise as a sampler's early estimates are
  2. targets  the shipped VAE decoder's images of those latents (the tiny one learns to be that decoder)
  3. train    the tiny decoder alone: L1 + MSE against the targets, AdamW with warm-up and cosine decay over
              the time cap
  4. check    held-out latents: PSNR against the VAE decoder, and ``sdrt.shapes.read`` of both decoders' images
              (the same reading, colour, shape and background)
  5. ship     (--ship) the AutoencoderTiny in fp16 (a diffusers folder) with its model card into
              sdrt/data/weights/shapes-tiny-vae/, which ``sdrt export shapes OUT`` exports as ``vae_decoder_tiny``

    python scripts/train_shapes_tiny_vae.py --out build/shapes-tiny-vae --ship    # ~8 minutes on 2 cores
    python scripts/train_shapes_tiny_vae.py --minutes 0.2 --images 300            # smoke test
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_shapes import REPO, batches, encode_latents, frozen_shapes, machine_info, timed_loop  # noqa: E402

from sdrt import shapes  # noqa: E402

SHIP_DIR = REPO / "sdrt" / "data" / "weights" / "shapes-tiny-vae"
CHANNELS, BLOCKS = 32, 2  # per level of the decoder (TAESD: 64 and 3)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="build/shapes-tiny-vae", help="output folder (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=7.0, help="training time cap (default: %(default)s)")
    p.add_argument("--images", type=int, default=4000, help="data set size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up (default: %(default)s)")
    p.add_argument("--noisy-share", type=float, default=0.3,
                   help="share of latents blended with noise, as early estimates are (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the noise (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--ship", action="store_true", help=f"copy the tiny VAE (fp16) and its card to {SHIP_DIR}")
    return p.parse_args(argv)


def make_tiny_vae(latent_channels: int, levels: int):
    from diffusers import AutoencoderTiny

    return AutoencoderTiny(latent_channels=latent_channels, encoder_block_out_channels=(16,) * levels,
                           decoder_block_out_channels=(CHANNELS,) * levels, num_encoder_blocks=(1,) * levels,
                           num_decoder_blocks=(BLOCKS,) * (levels - 1) + (1,))


def latents_and_targets(pipe, images: np.ndarray, args, rng: np.random.Generator):
    """Scaled latents (posterior samples, a share blended with noise) and the VAE decoder's images of them."""
    import torch

    mean, std = encode_latents(pipe.vae, images)
    scale = pipe.vae.config.scaling_factor
    g = torch.Generator().manual_seed(args.seed)
    latents = (mean + std * torch.randn(mean.shape, generator=g)) * scale
    noisy = torch.from_numpy(rng.random(len(latents)) < args.noisy_share)
    mix = torch.rand(len(latents), 1, 1, 1, generator=g) * 0.6
    blended = (1 - mix) * latents + mix * torch.randn(latents.shape, generator=g)
    latents = torch.where(noisy[:, None, None, None], blended, latents)
    with torch.no_grad():
        targets = torch.cat([pipe.vae.decode(latents[i:i + 250] / scale).sample.clamp(-1, 1)
                             for i in range(0, len(latents), 250)])
    return latents, targets


def train(tiny, latents, targets, args, log, rng) -> dict:
    import torch

    decoder = tiny.decoder
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=args.lr, weight_decay=1e-4)
    order = batches(len(latents), args.batch_size, rng)

    def step(i: int) -> float:
        idx = torch.from_numpy(next(order))
        out = tiny.decode(latents[idx]).sample
        loss = torch.nn.functional.l1_loss(out, targets[idx]) + torch.nn.functional.mse_loss(out, targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss)

    steps, seconds, losses = timed_loop("tiny-vae", args.minutes * 60, step, optimizer, args.lr, args.warmup_steps, log)
    return {"steps": steps, "seconds": round(seconds, 1), "final_loss": float(np.mean(losses[-100:]))}


def check(tiny, latents, targets) -> dict:
    """PSNR of the tiny decoder against the VAE decoder on held-out latents, and whether the reader reads the same."""
    import torch

    with torch.no_grad():
        out = torch.cat([tiny.decode(latents[i:i + 100]).sample.clamp(-1, 1) for i in range(0, len(latents), 100)])
    to_u8 = lambda x: ((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)  # noqa: E731
    small, full = to_u8(out), to_u8(targets)
    mse = ((small.astype(np.float64) - full) ** 2).mean(axis=(1, 2, 3))
    same = sum(shapes.read(a) == shapes.read(b) for a, b in zip(small, full))
    return {"held_out": len(latents), "psnr_db_median": round(float(np.median(10 * np.log10(255 ** 2 / mse))), 2),
            "same_reading": int(same)}


def model_card(report: dict) -> str:
    r, c = report["training"], report["check"]
    return f"""# shapes tiny VAE decoder

A tiny VAE decoder (diffusers' `AutoencoderTiny`, TAESD's architecture with {CHANNELS} channels and {BLOCKS} blocks per
level) for the built-in `shapes` model, distilled from its VAE decoder by `scripts/train_shapes_tiny_vae.py`
(`make train-shapes-tiny-vae`). `sdrt export shapes OUT` exports it as `vae_decoder_tiny`: live previews use it,
and `sdrt generate --vae tiny` decodes with it. Only its decoder is trained (the encoder is unused).

- training: {r['steps']} steps of batch {report['args']['batch_size']} in {r['seconds'] / 60:.1f} min
  ({report['machine'].get('cpu', '')}), final loss {r['final_loss']:.4f}
- held-out latents ({c['held_out']}): median {c['psnr_db_median']} dB against the VAE decoder; the reader reads
  the same colour, shape and background in {c['same_reading']}/{c['held_out']}
- weights: fp16, {report['parameters']:,} parameters in the decoder
"""


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    out, rng, log, pipe = frozen_shapes(args)
    started = time.perf_counter()
    images, _ = shapes.make_dataset(args.images, args.seed)
    latents, targets = latents_and_targets(pipe, images, args, rng)
    held = max(len(latents) // 20, 1)
    levels = len(pipe.vae.config.block_out_channels)
    tiny = make_tiny_vae(pipe.vae.config.latent_channels, levels)
    training = train(tiny, latents[held:], targets[held:], args, log, rng)
    tiny.eval()
    report = {"args": vars(args), "machine": machine_info(), "training": training,
              "check": check(tiny, latents[:held], targets[:held]),
              "parameters": sum(p.numel() for p in tiny.decoder.parameters()),
              "minutes": round((time.perf_counter() - started) / 60, 1)}
    log(json.dumps(report), echo=True)
    folder = out / "tiny-vae"
    tiny.to(torch.float16).save_pretrained(folder)
    (folder / "README.md").write_text(model_card(report), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if args.ship:
        shutil.rmtree(SHIP_DIR, ignore_errors=True)
        shutil.copytree(folder, SHIP_DIR)
        print(f"shipped the tiny VAE to {SHIP_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
