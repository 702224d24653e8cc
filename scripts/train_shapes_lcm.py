#!/usr/bin/env python
"""Train ``shapes-lcm``: an LCM-LoRA that makes the built-in ``shapes`` model draw in 4 steps, on a CPU.

Latent consistency distillation (Luo et al., https://arxiv.org/abs/2311.05556), as diffusers'
``train_lcm_distill_lora_sd_wds.py``: the shipped model with guidance is the teacher, the same model with a LoRA the
student. Each training step takes a latent noised to a timestep t of the 50-step skip schedule, lets the teacher go
one DDIM step with classifier-free guidance to t − 20, and trains the student's consistency function
f(x, t) = c_skip(t)·x + c_out(t)·x̂₀ at t to equal its own (no gradient) at t − 20. The guidance is distilled in:
the LoRA is used with guidance 1 (one U-Net pass a step) and the LCM sampler.

  1. data     N images of the base model's own shapes drawn by ``sdrt.shapes`` (the held-out ones never)
  2. latents  through the shipped VAE (posterior mean and std)
  3. lora     a rank-R LoRA (PEFT) on every linear and convolution layer of the U-Net, the pseudo-Huber loss
  4. check    the nine check prompts with the LoRA (LCM, 4 steps, guidance 1, seeds 1–9), and without it, read
              back by ``sdrt.shapes.read``; a contact sheet
  5. ship     (--ship) the LoRA in fp16 with its model card into sdrt/data/loras/shapes/

    python scripts/train_shapes_lcm.py --out build/shapes-lcm      # ~21 minutes on 2 cores; then it continues:
    python scripts/train_shapes_lcm.py --out build/shapes-lcm2 --resume build/shapes-lcm/shapes-lcm.safetensors
        --minutes 22 --lr 6e-4 --warmup-steps 10 --seed 1 --ship   # (both: make train-shapes-lcm)
    python scripts/train_shapes_lcm.py --minutes 0.3 --images 300          # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_shapes import (Log, batches, encode_latents, frozen_shapes, loop_summary, machine_info,  # noqa: E402
                          optimizer_step, run_timed, timed_loop)
from train_shapes_lora import SHIP_DIR, write_lora  # noqa: E402

from sdrt import shapes  # noqa: E402

NAME = "shapes-lcm"
# every linear and convolution layer of the U-Net but its first and last (diffusers' LCM-LoRA targets)
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
SKIP = 20  # timesteps per step of the 50-step skip schedule (LCMScheduler's original_inference_steps = 50)
TIMESTEP_SCALING = 10.0  # LCMScheduler's default: the boundary condition's scale
SIGMA_DATA = 0.5
HUBER_C = 0.001
CHECK_STEPS = 4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="build/shapes-lcm", help="output folder (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=20.0, help="training time cap (default: %(default)s)")
    p.add_argument("--images", type=int, default=4000, help="data set size (default: %(default)s)")
    p.add_argument("--rank", type=int, default=32, help="LoRA rank, alpha the same (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default: %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up (default: %(default)s)")
    p.add_argument("--guidance", type=float, nargs=2, default=(4.0, 6.0), metavar=("MIN", "MAX"),
                   help="the teacher's guidance scale, drawn per sample from this range (default: 4 6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the noise (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--resume", metavar="FILE", help="start from this LoRA (a shapes-lcm.safetensors written before)")
    p.add_argument("--ship", action="store_true", help=f"copy the LoRA (fp16) and its card to {SHIP_DIR}")
    return p.parse_args(argv)


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """The base model's training combinations (none held out), each drawn at a random place and size."""
    base = shapes.combinations()
    triples = [base[i] for i in rng.integers(0, len(base), n)]
    return np.stack([shapes.draw(*t, rng) for t in triples]), [shapes.caption(*t) for t in triples]


def add_lora(pipe, rank: int, resume: str | None = None):
    """The trainable LoRA, random (PEFT's Gaussian down, zero up: the model unchanged) or read from ``resume``."""
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=UNET_TARGETS)
    pipe.unet.add_adapter(config)
    if resume:
        state = {k.removeprefix("unet."): v.float() for k, v in load_file(resume).items()}
        result = set_peft_model_state_dict(pipe.unet, state)
        if result.unexpected_keys:
            raise SystemExit(f"{resume} is not a rank-{rank} LoRA of these layers: {result.unexpected_keys[:3]}")
    return {"unet": config}


def boundary(t):
    """c_skip(t), c_out(t) of the consistency function, as LCMScheduler computes them, shaped to broadcast."""
    scaled = t.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip[:, None, None, None], c_out[:, None, None, None]


def train(pipe, lat_mean, lat_std, captions: list[str], args, log: Log, rng: np.random.Generator) -> dict:
    import torch

    unet, scale = pipe.unet, pipe.vae.config.scaling_factor
    alphas = torch.as_tensor(pipe.scheduler.alphas_cumprod, dtype=torch.float32)
    unique = sorted(set(captions))
    with torch.no_grad():  # the text encoder stays frozen: every caption's embedding once
        ids = pipe.tokenizer(unique + [""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        embeddings = pipe.text_encoder(ids)[0]
    caption_index = torch.tensor([unique.index(c) for c in captions])
    skip_timesteps = torch.arange(1, 1000 // SKIP + 1) * SKIP - 1  # 19, 39, …, 999
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    order = batches(len(captions), args.batch_size, rng)

    def x0_and_eps(eps, x, t):
        a = alphas[t][:, None, None, None]
        return (x - (1 - a).sqrt() * eps) / a.sqrt(), eps

    def consistency(x, t, cond):
        c_skip, c_out = boundary(t)
        return c_skip * x + c_out * x0_and_eps(unet(x, t, cond).sample, x, t)[0]

    def step(i):
        idx = torch.from_numpy(next(order))
        n = len(idx)
        z = (lat_mean[idx] + lat_std[idx] * torch.randn_like(lat_mean[idx])) * scale
        cond = embeddings[caption_index[idx]]
        k = torch.randint(0, len(skip_timesteps), (n,))
        t, t_prev = skip_timesteps[k], (skip_timesteps[k] - SKIP).clamp(min=0)
        a_t = alphas[t][:, None, None, None]
        x_t = a_t.sqrt() * z + (1 - a_t).sqrt() * torch.randn_like(z)
        student = consistency(x_t, t, cond)
        with torch.no_grad():
            unet.disable_adapters()  # the teacher: one DDIM step with guidance
            eps_uncond, eps_cond = unet(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                        torch.cat([embeddings[-1:].expand(n, -1, -1), cond])).sample.chunk(2)
            unet.enable_adapters()
            g = torch.empty(n, 1, 1, 1).uniform_(*args.guidance)
            eps = eps_uncond + g * (eps_cond - eps_uncond)
            x0 = x0_and_eps(eps, x_t, t)[0]
            a_prev = alphas[t_prev][:, None, None, None]
            x_prev = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            target = consistency(x_prev, t_prev, cond)
        loss = (((student - target) ** 2 + HUBER_C**2).sqrt() - HUBER_C).mean()
        return optimizer_step(opt, loss, params)

    steps, seconds, losses = timed_loop("lcm", args.minutes * 60, step, opt, args.lr, args.warmup_steps, log)
    unet.eval()
    return loop_summary(steps, seconds, losses, args.batch_size, params)


def check(pipe, out: Path) -> dict:
    """The nine check prompts in 4 LCM steps at guidance 1, with the LoRA and without it, read back."""
    import diffusers
    import torch

    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.LCMScheduler.from_config(pipe.scheduler.config)
    result, images, labels = {}, [], []
    for use in (False, True):
        (pipe.unet.enable_adapters if use else pipe.unet.disable_adapters)()
        drawn = []
        for i, triple in enumerate(shapes.CHECKS):
            image = pipe(shapes.caption(*triple), num_inference_steps=CHECK_STEPS, guidance_scale=1.0, height=64,
                         width=64, generator=torch.Generator().manual_seed(1 + i), output_type="np").images[0]
            drawn.append((image * 255).round().clip(0, 255).astype(np.uint8))
        right, details = shapes.adherence(drawn, shapes.CHECKS)
        key = "with_lora" if use else "without_lora"
        result[key] = {"right": right, "total": len(drawn), "read": [d["read"] for d in details]}
        images += drawn
        labels += [[f"{c} {s} / {b}", "with the LoRA" if use else "without",
                    "read: " + " ".join(p or "?" for p in d["read"])]
                   for (c, s, b), d in zip(shapes.CHECKS, details)]
    shapes.contact_sheet(images, labels, columns=len(shapes.CHECKS), scale=3).save(out / "check.png")
    return result


def first_round(resume: str | None) -> dict | None:
    """What the run that wrote ``resume`` did (its report.json beside it), for the model card."""
    report = Path(resume).with_name("report.json") if resume else None
    if report is None or not report.is_file():
        return None
    r = json.loads(report.read_text())
    return {"steps": r["training"]["steps"], "minutes": round(r["training"]["seconds"] / 60, 1),
            "lr": r["args"]["lr"], "seed": r["args"]["seed"], "right": r["check"]["with_lora"]["right"]}


def model_card(r: dict) -> str:
    a, m, t, c = r["args"], r["machine"], r["training"], r["check"]
    f = first_round(a.get("resume"))
    resumed = (f" This continued a first run of {f['steps']} steps ({f['minutes']} minutes, seed {f['seed']}, peak "
               f"learning rate {f['lr']:g}; {f['right']}/9 then) at peak learning rate {a['lr']:g}, seed {a['seed']}."
               if f else "")
    return f"""# {NAME}

An LCM-LoRA for the built-in `shapes` model: images in {CHECK_STEPS} steps instead of 25, one U-Net pass a step.
Use it with `<lora:{NAME}:1>` in the prompt, the `lcm` sampler, {CHECK_STEPS} steps and guidance 1 (the guidance is
distilled in): `sdrt generate OUT --prompt "a red circle on a blue background <lora:{NAME}:1>" --sampler lcm
--steps 4 --guidance 1`.

- Trained by `scripts/train_shapes_lcm.py` (`make train-shapes-lcm`) from seed {a['seed']}: latent consistency
  distillation of the `shapes` model with guidance {a['guidance'][0]:g}–{a['guidance'][1]:g} (the teacher, one DDIM
  step of the 50-step skip schedule) into a rank-{a['rank']} LoRA (alpha {a['rank']}) on every linear and
  convolution layer of the U-Net ({t['trained_parameters']:,} parameters); {a['images']} images of the model's own
  shapes, {t['steps']} steps of batch {t['batch_size']} in {t['seconds'] / 60:.1f} minutes, pseudo-Huber loss
  {t['first_loss']:.4f} → {t['final_loss']:.4f}.{resumed}
- Machine: {m['cpu']} ({m['cores']} cores; {m['cpu_flags']}), torch {m['torch']}, diffusers {m['diffusers']}.
- Check (diffusers' LCMScheduler, {CHECK_STEPS} steps, guidance 1, seeds 1–{c['with_lora']['total']}, the nine check
  prompts, three of them held out of the model's training; read back by `sdrt.shapes.read`): with the LoRA
  {c['with_lora']['right']}/{c['with_lora']['total']} right; without it {c['without_lora']['right']}/{c['without_lora']['total']}.
- Stored in fp16, in diffusers' LoRA format (`unet.…lora_A/lora_B`, alphas in the metadata).
"""


def main(argv=None) -> int:
    args = parse_args(argv)
    out, rng, log, pipe = frozen_shapes(args)
    images, captions = make_data(args.images, rng)
    lat_mean, lat_std = encode_latents(pipe.vae, images)
    configs = add_lora(pipe, args.rank, args.resume)
    report = {"args": vars(args), "machine": machine_info(),
              "training": train(pipe, lat_mean, lat_std, captions, args, log, rng)}
    report["check"] = check(pipe, out)
    log(json.dumps(report["check"]), echo=True)
    write_lora(pipe, configs, report, model_card(report), out / f"{NAME}.safetensors", args.ship)
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_timed(main))
