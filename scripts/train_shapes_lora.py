#!/usr/bin/env python
"""Train ``shapes-star``: a LoRA that teaches the built-in ``shapes`` model a shape it has never seen, the
five-pointed star ("a red star on a blue background"), on a CPU.

  1. data     N images drawn by ``sdrt.shapes``: stars in every colour on every background (three quarters), and
              the model's own shapes (a quarter, so the LoRA keeps them as they were)
  2. latents  the images through the shipped VAE (posterior mean and std)
  3. lora     rank-8 LoRAs (PEFT) on the U-Net's attention, projection and feed-forward layers and the text
              encoder's attention: epsilon prediction as the base model was trained (min-SNR-gamma weights,
              captions dropped to "" for guidance), AdamW with warm-up and cosine decay over the time cap
  4. check    star prompts with the LoRA and without it (DPM++ 2M, 25 steps, guidance 5, fixed seeds), read back
              by ``sdrt.shapes.read``; a contact sheet
  5. ship     (--ship) the LoRA in fp16 with its model card into sdrt/data/loras/shapes/, which
              ``sdrt export shapes OUT`` copies to OUT/loras/

    python scripts/train_shapes_lora.py --out build/shapes-lora --ship      # ~15 minutes on 2 cores
    python scripts/train_shapes_lora.py --minutes 0.3 --images 300          # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_shapes import (REPO, Log, batches, encode_latents, frozen_shapes, loop_summary, machine_info,  # noqa: E402
                          optimizer_step, min_snr_schedule, run_timed, timed_loop)

from sdrt import shapes  # noqa: E402

NAME = "shapes-star"
SHIP_DIR = REPO / "sdrt" / "data" / "loras" / "shapes"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# what the check draws: every colour, each on two backgrounds
STAR_CHECKS = (("red", "blue"), ("yellow", "black"), ("green", "white"), ("blue", "gray"), ("red", "white"),
               ("yellow", "gray"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="build/shapes-lora", help="output folder (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=12.0, help="training time cap (default: %(default)s)")
    p.add_argument("--images", type=int, default=4000, help="data set size (default: %(default)s)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank, alpha the same (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default: %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up (default: %(default)s)")
    p.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR-gamma loss weighting (default: %(default)s)")
    p.add_argument("--caption-dropout", type=float, default=0.1, help="share of empty captions (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the noise (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--ship", action="store_true", help=f"copy the LoRA (fp16) and its card to {SHIP_DIR}")
    return p.parse_args(argv)


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Three quarters stars, a quarter the base model's own shapes, shuffled."""
    stars = [(c, shapes.STAR, b) for c in shapes.COLOURS for b in shapes.BACKGROUNDS if c != b]
    base = shapes.combinations()
    triples = [stars[i % len(stars)] if i % 4 else base[(i // 4) % len(base)] for i in range(n)]
    triples = [triples[i] for i in rng.permutation(n)]
    images = np.stack([shapes.draw(*t, rng) for t in triples])
    return images, [shapes.caption(*t) for t in triples]


def add_loras(pipe, rank: int):
    from peft import LoraConfig

    configs = {}
    for network, targets in (("unet", UNET_TARGETS), ("text_encoder", TEXT_TARGETS)):
        config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets)
        getattr(pipe, network).add_adapter(config)
        configs[network] = config
    return configs


def train(pipe, lat_mean, lat_std, captions: list[str], args, log: Log, rng: np.random.Generator) -> dict:
    import torch

    unet, text_encoder, scale = pipe.unet, pipe.text_encoder, pipe.vae.config.scaling_factor
    unet.train()
    text_encoder.train()
    unique = sorted(set(captions)) + [""]
    ids = pipe.tokenizer(unique, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    caption_index = torch.tensor([unique.index(c) for c in captions])
    schedule, weights = min_snr_schedule(pipe.scheduler.config, args.snr_gamma)
    params = [p for p in list(unet.parameters()) + list(text_encoder.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    order = batches(len(captions), args.batch_size, rng)

    def step(i):
        idx = torch.from_numpy(next(order))
        z = (lat_mean[idx] + lat_std[idx] * torch.randn_like(lat_mean[idx])) * scale
        caps = caption_index[idx].clone()
        caps[torch.rand(len(idx)) < args.caption_dropout] = len(unique) - 1
        noise = torch.randn_like(z)
        t = torch.randint(0, schedule.config.num_train_timesteps, (len(idx),))
        pred = unet(schedule.add_noise(z, noise, t), t, text_encoder(ids[caps])[0]).sample
        loss = (weights[t] * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        return optimizer_step(opt, loss, params)

    steps, seconds, losses = timed_loop("lora", args.minutes * 60, step, opt, args.lr, args.warmup_steps, log)
    unet.eval()
    text_encoder.eval()
    return loop_summary(steps, seconds, losses, args.batch_size, params)


def check(pipe, out: Path) -> dict:
    """The star prompts with the LoRA and without it (the adapters disabled), read back."""
    import diffusers
    import torch

    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    triples = [(c, shapes.STAR, b) for c, b in STAR_CHECKS]
    result, images, labels = {}, [], []
    for use in (False, True):
        for network in (pipe.unet, pipe.text_encoder):
            (network.enable_adapters if use else network.disable_adapters)()
        drawn = []
        for i, triple in enumerate(triples):
            image = pipe(shapes.caption(*triple), num_inference_steps=25, guidance_scale=5.0, height=64, width=64,
                         generator=torch.Generator().manual_seed(1 + i), output_type="np").images[0]
            drawn.append((image * 255).round().clip(0, 255).astype(np.uint8))
        right, details = shapes.adherence(drawn, triples)
        key = "with_lora" if use else "without_lora"
        result[key] = {"right": right, "total": len(triples), "read": [d["read"] for d in details]}
        images += drawn
        labels += [[f"{c} star / {b}", "with the LoRA" if use else "without",
                    "read: " + " ".join(p or "?" for p in d["read"])] for (c, _, b), d in zip(triples, details)]
    shapes.contact_sheet(images, labels, columns=len(triples), scale=3).save(out / "check.png")
    return result


def save(pipe, configs: dict, path: Path) -> None:
    """The LoRA as diffusers writes it (``unet.…lora_A/B``, ``text_encoder.…``, the alphas in the metadata), fp16."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import save_file

    layers = {f"{n}_lora_layers": {k: v.to(torch.float16) for k, v in get_peft_model_state_dict(getattr(pipe, n)).items()}
              for n in configs}
    metadata = {f"{n}_lora_adapter_metadata": c.to_dict() for n, c in configs.items()}
    StableDiffusionPipeline.save_lora_weights(path.parent, weight_name=path.name, **layers, **metadata)
    with safe_open(str(path), framework="pt") as f:  # diffusers may write fp32: make sure the shipped file is fp16
        tensors, meta = {k: f.get_tensor(k).to(torch.float16) for k in f.keys()}, f.metadata()
    save_file(tensors, str(path), metadata=meta)


def write_lora(pipe, configs: dict, report: dict, card: str, path: Path, ship: bool) -> None:
    """The LoRA at ``path``, its model card (NAME.md) and the run's report.json beside it; with ``ship``, the LoRA
    and its card copied into the package, where ``sdrt export shapes`` finds them."""
    save(pipe, configs, path)
    path.with_suffix(".md").write_text(card, encoding="utf-8")
    path.with_name("report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    if ship:
        SHIP_DIR.mkdir(parents=True, exist_ok=True)
        for file in (path, path.with_suffix(".md")):
            (SHIP_DIR / file.name).write_bytes(file.read_bytes())
            (SHIP_DIR / file.name).chmod(0o644)
        print(f"shipped {path.stem} to {SHIP_DIR}")


def model_card(r: dict) -> str:
    a, m, t, c = r["args"], r["machine"], r["training"], r["check"]
    return f"""# {NAME}

A LoRA for the built-in `shapes` model that teaches it a shape it was never shown: the five-pointed star.
Use it with `<lora:{NAME}:1>` in a prompt such as `a red star on a blue background`.

- Trained by `scripts/train_shapes_lora.py` (`make train-shapes-lora`) from seed {a['seed']}: {a['images']} images
  drawn by `sdrt.shapes` (three quarters stars in every colour on every background, a quarter the model's own
  shapes), rank {a['rank']} (alpha {a['rank']}) on the U-Net's attention, projection and feed-forward layers and the
  text encoder's attention ({t['trained_parameters']:,} parameters), {t['steps']} steps of batch {t['batch_size']} in
  {t['seconds'] / 60:.1f} minutes, loss {t['first_loss']:.4f} → {t['final_loss']:.4f}.
- Machine: {m['cpu']} ({m['cores']} cores; {m['cpu_flags']}), torch {m['torch']}, diffusers {m['diffusers']}.
- Check (DPM++ 2M, 25 steps, guidance 5, seeds 1–{c['with_lora']['total']}, read back by `sdrt.shapes.read`): with
  the LoRA {c['with_lora']['right']}/{c['with_lora']['total']} stars of the right colour on the right background;
  without it {c['without_lora']['right']}/{c['without_lora']['total']}.
- Stored in fp16, in diffusers' LoRA format (`unet.…lora_A/lora_B`, `text_encoder.…`, alphas in the metadata).
"""


def main(argv=None) -> int:
    args = parse_args(argv)
    out, rng, log, pipe = frozen_shapes(args)
    images, captions = make_data(args.images, rng)
    lat_mean, lat_std = encode_latents(pipe.vae, images)
    configs = add_loras(pipe, args.rank)
    report = {"args": vars(args), "machine": machine_info(), "training": train(pipe, lat_mean, lat_std, captions,
                                                                               args, log, rng)}
    report["check"] = check(pipe, out)
    log(json.dumps(report["check"]), echo=True)
    write_lora(pipe, configs, report, model_card(report), out / f"{NAME}.safetensors", args.ship)
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_timed(main))
