#!/usr/bin/env python
"""Train the built-in ``shapes`` model from scratch on a CPU: a small Stable Diffusion 1.x that
draws "a {colour} {shape} on a {background} background".

Stages, each capped in wall-clock time rather than in steps (the machine decides how many
steps fit), each with a progress bar and a log file in OUT:

  1. data      N images drawn by ``sdrt.shapes`` from the seed, balanced over every combination
               except the held-out ones
  2. vae       AutoencoderKL, 64x64 RGB <-> 16x16x4 latents (factor 4): L1 + L2 reconstruction
               and a small KL term; then the data set's latents and their scaling factor
               (1 / std, stored as the VAE's ``scaling_factor``, as SD does)
  3. unet      U-Net and CLIP text encoder together: epsilon prediction on SD's noise schedule
               (scaled_linear 0.00085..0.012, 1000 steps), min-SNR-gamma loss weights, captions
               dropped to "" for classifier-free guidance, AdamW with warm-up and cosine decay
               over the time cap
  4. model     OUT/model: a diffusers StableDiffusionPipeline folder (safetensors) with SD's
               PNDM scheduler config and the real CLIP tokenizer, which ``sdrt export`` reads
  5. check     the nine prompts of ``sdrt.shapes.CHECKS`` (three held out of training) at 25
               steps, guidance 5, fixed seeds, read back by ``sdrt.shapes.read``; a contact
               sheet and OUT/model/MODEL_CARD.md

    python scripts/train_shapes.py --out build/shapes-train          # ~26 minutes on 2 cores
    python scripts/train_shapes.py --vae-minutes 0.2 --unet-minutes 0.3 --images 500  # smoke test

torch, diffusers and transformers are needed here only; nothing of this script is imported by
the runtime.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing sdrt

from sdrt import shapes  # noqa: E402

TEXT_CONFIG = dict(
    vocab_size=49408,  # the real CLIP vocabulary: any prompt tokenizes as it would for SD 1.x
    hidden_size=64,
    intermediate_size=256,
    projection_dim=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 64, 64),  # three blocks: 64x64 pixels -> 16x16 latents
    layers_per_block=1,
    norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    sample_size=64,
)
UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 96, 128),
    layers_per_block=1,
    norm_num_groups=32,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=TEXT_CONFIG["hidden_size"],
    attention_head_dim=8,  # diffusers' name for the number of heads in this U-Net
)
ARCH = REPO / "sdrt" / "data" / "arch" / "tiny"  # SD 1.x's scheduler and tokenizer configs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/shapes-train", help="output folder (default: %(default)s)")
    p.add_argument("--vae-minutes", type=float, default=5.0, help="VAE training time cap (default: %(default)s)")
    p.add_argument("--unet-minutes", type=float, default=19.0,
                   help="U-Net + text encoder training time cap (default: %(default)s)")
    p.add_argument("--images", type=int, default=10000, help="data set size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the noise (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="U-Net batch size (default: %(default)s)")
    p.add_argument("--vae-batch-size", type=int, default=16, help="VAE batch size (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--unet-channels", default=",".join(map(str, UNET_CONFIG["block_out_channels"])),
                   help="U-Net block_out_channels, three numbers (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="U-Net + text encoder peak learning rate (default: %(default)s)")
    p.add_argument("--vae-lr", type=float, default=1e-3, help="VAE peak learning rate (default: %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up, both stages (default: %(default)s)")
    p.add_argument("--kl-weight", type=float, default=1e-4,
                   help="VAE KL weight, against per-pixel mean L1 + L2 (default: %(default)s)")
    p.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR-gamma loss weighting (default: %(default)s)")
    p.add_argument("--caption-dropout", type=float, default=0.1,
                   help="share of captions replaced by \"\" for classifier-free guidance (default: %(default)s)")
    p.add_argument("--offset-noise", type=float, default=0.05,
                   help="per-channel constant noise added in training, so plain backgrounds follow the prompt "
                        "rather than the starting noise; 0 turns it off (default: %(default)s)")
    p.add_argument("--ema", type=float, default=0.998,
                   help="decay of the exponential moving average of the U-Net and text-encoder weights that is "
                        "shipped; 0 ships the last weights (default: %(default)s)")
    p.add_argument("--reuse-vae", action="store_true", help="load OUT/vae from an earlier run instead of training it")
    p.add_argument("--check-steps", type=int, default=25, help="sampling steps of the adherence check (default: %(default)s)")
    p.add_argument("--check-guidance", type=float, default=5.0, help="guidance of the adherence check (default: %(default)s)")
    args = p.parse_args(argv)
    channels = tuple(int(c) for c in args.unet_channels.split(","))
    if len(channels) != 3 or any(c % UNET_CONFIG["norm_num_groups"] for c in channels):
        p.error(f"--unet-channels needs three multiples of {UNET_CONFIG['norm_num_groups']}, got {args.unet_channels!r}")
    args.unet_config = dict(UNET_CONFIG, block_out_channels=channels)
    return args


# -- helpers --------------------------------------------------------------------------------------

class Log:
    """Lines to a log file in OUT (and, for the important ones, to the console)."""

    def __init__(self, path: Path):
        self.file = path.open("a", encoding="utf-8")

    def __call__(self, msg: str, echo: bool = False):
        self.file.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        self.file.flush()
        if echo:
            from tqdm import tqdm

            tqdm.write(msg)

    def close(self):
        self.file.close()


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def lr_factor(step: int, elapsed: float, cap: float, warmup_steps: int, warmup_end: list, floor: float = 0.05) -> float:
    """Linear warm-up over ``warmup_steps`` steps, then cosine decay to ``floor`` at the time cap.

    The decay runs on wall-clock time since the cap is in time; ``warmup_end`` (a one-item list)
    remembers when the warm-up ended."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if warmup_end[0] is None:
        warmup_end[0] = elapsed
    frac = min(1.0, (elapsed - warmup_end[0]) / max(1e-6, cap - warmup_end[0]))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))


def timed_loop(name: str, cap_s: float, step_fn, optimizer, base_lr: float, warmup_steps: int, log: Log,
               log_every: int = 50):
    """Call ``step_fn(step) -> loss`` until ``cap_s`` seconds have passed, setting the learning
    rate each step. Returns (steps, seconds, losses)."""
    from tqdm import tqdm

    losses, warmup_end = [], [None]
    start = time.perf_counter()
    step, smooth = 0, None
    bar = tqdm(total=round(cap_s), unit="s", desc=name, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s {postfix}")
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= cap_s and step > 0:
            break
        lr = base_lr * lr_factor(step, elapsed, cap_s, warmup_steps, warmup_end)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = step_fn(step)
        losses.append(loss)
        smooth = loss if smooth is None else 0.98 * smooth + 0.02 * loss
        step += 1
        now = time.perf_counter() - start
        bar.n = min(round(now), bar.total)
        bar.set_postfix_str(f"step {step} loss {smooth:.4f} lr {lr:.2e}", refresh=True)
        if step % log_every == 0 or step == 1:
            log(f"{name} step {step} t {now:.1f}s loss {loss:.5f} smooth {smooth:.5f} lr {lr:.3e}")
    bar.close()
    seconds = time.perf_counter() - start
    log(f"{name} done: {step} steps in {seconds:.1f}s, mean loss of the last 100 steps {np.mean(losses[-100:]):.5f}",
        echo=True)
    return step, seconds, losses


def optimizer_step(opt, loss, params, max_norm: float = 1.0) -> float:
    """Backpropagate ``loss``, clip the gradients of ``params`` to ``max_norm`` and step; the loss as a number."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    return loss.item()


def run_timed(main) -> int:
    """``main()``'s exit code, after printing how long it took (the add-on training scripts' entry point)."""
    t0 = time.perf_counter()
    code = main()
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min")
    return code


def loop_summary(steps: int, seconds: float, losses: list[float], batch_size: int, params) -> dict:
    """What a model card says of an add-on's training loop."""
    return {"steps": steps, "seconds": round(seconds, 1), "batch_size": batch_size,
            "trained_parameters": sum(p.numel() for p in params),
            "first_loss": float(np.mean(losses[:20])), "final_loss": float(np.mean(losses[-100:]))}


def machine_info() -> dict:
    import diffusers
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = []
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
        flags = sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma")))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpu_flags": " ".join(flags),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


# -- stages ---------------------------------------------------------------------------------------

def to_tensor(images_u8: np.ndarray):
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    import torch

    # contiguous: a permuted NHWC tensor would run the whole network in channels-last layout, far
    # slower on CPU
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).contiguous().float().div_(127.5).sub_(1.0)


def train_vae(images: np.ndarray, args, log: Log, rng: np.random.Generator):
    import diffusers
    import torch

    vae = diffusers.AutoencoderKL(**VAE_CONFIG)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    n_latent = VAE_CONFIG["latent_channels"] * (64 // 4) ** 2
    parts = {"l1": [], "l2": [], "kl": []}

    def step(i):
        idx = rng.integers(0, len(images), args.vae_batch_size)
        x = to_tensor(images[idx])
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample()).sample
        l1, l2 = (y - x).abs().mean(), (y - x).pow(2).mean()
        kl = posterior.kl().mean() / n_latent
        loss = l1 + l2 + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        for k, v in (("l1", l1), ("l2", l2), ("kl", kl)):
            parts[k].append(float(v.detach()))
        return float(loss)

    steps, seconds, losses = timed_loop("vae", args.vae_minutes * 60, step, opt, args.vae_lr, args.warmup_steps, log)
    vae.eval()
    final = {k: float(np.mean(v[-100:])) for k, v in parts.items()}
    final["loss"] = float(np.mean(losses[-100:]))
    return vae, {"steps": steps, "seconds": round(seconds, 1), "batch_size": args.vae_batch_size, "final": final}


def encode_latents(vae, images: np.ndarray, batch: int = 250):
    """The posterior's mean and std of every image (float32 [N, 4, 16, 16] each)."""
    import torch
    from tqdm import tqdm

    means, stds = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(images), batch), desc="latents", unit="batch"):
            dist = vae.encode(to_tensor(images[i:i + batch])).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def frozen_shapes(args) -> tuple[Path, np.random.Generator, Log, object]:
    """What training an add-on of the shipped ``shapes`` model starts from (the LoRA, the ControlNet): the output
    folder, the seeded generators and threads, the log, and the model with every network frozen."""
    import torch

    from sdrt.export.sources import load_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pipe = load_model("shapes").pipe
    for network in (pipe.unet, pipe.text_encoder, pipe.vae):
        network.requires_grad_(False)
    return out, np.random.default_rng(args.seed), Log(out / "train.log"), pipe


def min_snr_schedule(scheduler_config, gamma: float):
    """The training noise schedule (DDPM, from the model's scheduler config) and each timestep's min-SNR-gamma loss
    weight for epsilon prediction."""
    import diffusers

    schedule = diffusers.DDPMScheduler.from_config(scheduler_config)
    snr = schedule.alphas_cumprod / (1 - schedule.alphas_cumprod)
    return schedule, snr.clamp(max=gamma) / snr


def batches(n: int, size: int, rng: np.random.Generator):
    """Indices of ``size`` items at a time, through a fresh permutation of ``n`` each epoch."""
    order, pos = rng.permutation(n), 0
    while True:
        if pos + size > n:
            order, pos = rng.permutation(n), 0
        yield order[pos:pos + size]
        pos += size


def train_unet(lat_mean, lat_std, scale: float, caption_index: np.ndarray, captions: list[str], tokenizer, args,
               log: Log, rng: np.random.Generator):
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    unet = diffusers.UNet2DConditionModel(**args.unet_config)
    text_encoder.train()
    unet.train()
    # the same token ids the pipelines make: padded to 77 with <|endoftext|>, no attention mask
    ids_table = tokenizer(captions + [""], padding="max_length", max_length=tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids
    empty = len(captions)
    sched_cfg = json.loads((ARCH / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    noise_schedule = diffusers.DDPMScheduler(
        num_train_timesteps=sched_cfg["num_train_timesteps"], beta_start=sched_cfg["beta_start"],
        beta_end=sched_cfg["beta_end"], beta_schedule=sched_cfg["beta_schedule"], prediction_type="epsilon",
    )
    alphas_cumprod = noise_schedule.alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    # min-SNR-gamma for epsilon prediction (Hang et al. 2023): weight min(SNR, gamma) / SNR
    weights = snr.clamp(max=args.snr_gamma) / snr
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    ema = [p.detach().clone() for p in params] if args.ema else None
    order = batches(len(caption_index), args.batch_size, rng)
    caption_index = torch.from_numpy(caption_index)
    n_timesteps = noise_schedule.config.num_train_timesteps

    def step(i):
        idx = torch.from_numpy(next(order))
        z = (lat_mean[idx] + lat_std[idx] * torch.randn_like(lat_mean[idx])) * scale
        caps = caption_index[idx].clone()
        caps[torch.rand(len(idx)) < args.caption_dropout] = empty
        noise = torch.randn_like(z)
        if args.offset_noise:
            noise = noise + args.offset_noise * torch.randn(z.shape[0], z.shape[1], 1, 1)
        t = torch.randint(0, n_timesteps, (len(idx),))
        noisy = noise_schedule.add_noise(z, noise, t)
        hidden = text_encoder(ids_table[caps])[0]
        pred = unet(noisy, t, hidden).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (weights[t] * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if ema is not None:
            # the usual warm-up of the decay, so the average does not remember the random start
            decay = min(args.ema, (1 + i) / (10 + i))
            with torch.no_grad():
                for e, p in zip(ema, params):
                    e.lerp_(p, 1 - decay)
        return float(loss)

    steps, seconds, losses = timed_loop("unet+text", args.unet_minutes * 60, step, opt, args.lr, args.warmup_steps, log)
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    unet.eval()
    text_encoder.eval()
    stats = {"steps": steps, "seconds": round(seconds, 1), "batch_size": args.batch_size,
             "final_loss": float(np.mean(losses[-100:])), "first_loss": float(np.mean(losses[:20]))}
    return unet, text_encoder, stats


def check_reconstructions(vae, images: np.ndarray, triples: list, n: int = 210) -> dict:
    """Decode the latent means of ``n`` training images and read them back: what the VAE loses."""
    import torch

    n = min(n, len(images))
    with torch.no_grad():
        x = to_tensor(images[:n])
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mae = float((y - x).abs().mean()) * 127.5
    recon = ((y + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    right, _ = shapes.adherence(recon, triples[:n])
    return {"images": n, "read_right": int(right), "mean_abs_error_8bit": round(mae, 2)}


def adherence_check(pipe, args, out: Path) -> dict:
    """The nine check prompts as tests/test_shapes_model.py draws them through sdrt (DPM++ 2M, seeds 1..9): sdrt
    reproduces diffusers from a seed, so this predicts the test's result."""
    import diffusers
    import torch

    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    images = []
    t0 = time.perf_counter()
    for i, triple in enumerate(shapes.CHECKS):
        generator = torch.Generator().manual_seed(1 + i)
        image = pipe(shapes.caption(*triple), num_inference_steps=args.check_steps, guidance_scale=args.check_guidance,
                     height=64, width=64, generator=generator, output_type="np").images[0]
        images.append((image * 255).round().clip(0, 255).astype(np.uint8))
    seconds = time.perf_counter() - t0
    n_right, details = shapes.adherence(images, shapes.CHECKS)
    labels = []
    for d in details:
        c, s, b = d["expected"]
        got = " ".join(part or "?" for part in d["read"])
        labels.append([f"{c} {s} / {b}", "held out" if tuple(d["expected"]) in shapes.HELD_OUT else "seen in training",
                       "read: right" if d["right"] else f"read: {got}"])
    shapes.contact_sheet(images, labels, columns=3, scale=3).save(out / "adherence.png")
    return {"right": n_right, "total": len(images), "seconds": round(seconds, 1), "details": details,
            "steps": args.check_steps, "guidance": args.check_guidance, "seeds": list(range(1, len(images) + 1)),
            "scheduler": type(pipe.scheduler).__name__}


def write_model_card(path: Path, r: dict):
    a, m, d = r["args"], r["machine"], r["data"]
    held = "; ".join(shapes.caption(*t) for t in shapes.HELD_OUT)
    rows = "\n".join(
        f"| {r['check']['seeds'][i]} | {shapes.caption(*x['expected'])}{' (held out)' if tuple(x['expected']) in shapes.HELD_OUT else ''} | "
        f"{' '.join(p or '?' for p in x['read'])} | {'yes' if x['right'] else 'no'} |"
        for i, x in enumerate(r["check"]["details"])
    )
    v, u, rec, chk = r["vae"], r["unet"], r["reconstruction"], r["check"]
    text = f"""# shapes: a small Stable Diffusion trained from scratch on drawn shapes

A Stable Diffusion 1.x pipeline (diffusers `StableDiffusionPipeline`: AutoencoderKL, UNet2DConditionModel
with cross-attention, CLIPTextModel with the real CLIP vocabulary) trained from scratch on a CPU by
`scripts/train_shapes.py` on procedurally drawn 64x64 images. It draws what it is told:
"{shapes.CAPTION_TEMPLATE}".

## Data
- {d['images']} images, 64x64 RGB, drawn by `sdrt.shapes.draw` from seed {a['seed']} ({d['seconds']} s to draw),
  balanced over {d['combinations']} combinations (each {d['per_combination']} times).
- Caption: `{shapes.CAPTION_TEMPLATE}`; colours {', '.join(shapes.COLOURS)}; shapes {', '.join(shapes.SHAPES)};
  backgrounds {', '.join(shapes.BACKGROUNDS)}; a shape never has its background's colour.
- Shapes at a random position, side {shapes.SIZE_RANGE[0]:.0%}-{shapes.SIZE_RANGE[1]:.0%} of the image,
  anti-aliased; triangles upright.
- Held out of training (never drawn): {held}.

## Architecture
| component | class | parameters | config |
|---|---|---|---|
| VAE | AutoencoderKL | {r['params']['vae']:,} | blocks {list(VAE_CONFIG['block_out_channels'])}, {VAE_CONFIG['layers_per_block']} layer per block, 4 latent channels, 64x64 -> 16x16 (factor 4), scaling_factor {r['scaling_factor']:.5f} |
| U-Net | UNet2DConditionModel | {r['params']['unet']:,} | blocks {list(a['unet_config']['block_out_channels'])}, {', '.join(UNET_CONFIG['down_block_types'])}, {UNET_CONFIG['attention_head_dim']} heads, cross-attention dim {UNET_CONFIG['cross_attention_dim']} |
| text encoder | CLIPTextModel | {r['params']['text_encoder']:,} | vocabulary {TEXT_CONFIG['vocab_size']}, hidden {TEXT_CONFIG['hidden_size']}, {TEXT_CONFIG['num_hidden_layers']} layers, {TEXT_CONFIG['num_attention_heads']} heads, 77 positions |
| scheduler | {r['scheduler']} | | SD 1.x: scaled_linear 0.00085..0.012, 1000 steps, epsilon |

## Training
| stage | time cap | time | steps | batch | final loss (mean of last 100 steps) |
|---|---|---|---|---|---|
| VAE | {a['vae_minutes']} min | {v['seconds']} s | {v['steps']} | {v['batch_size']} | {v['final']['loss']:.4f} (L1 {v['final']['l1']:.4f}, L2 {v['final']['l2']:.4f}, KL/element {v['final']['kl']:.2f}) |
| U-Net + text encoder | {a['unet_minutes']} min | {u['seconds']} s | {u['steps']} | {u['batch_size']} | {u['final_loss']:.4f} (first 20 steps {u['first_loss']:.4f}) |

- VAE: AdamW lr {a['vae_lr']}, loss L1 + L2 (per pixel, images in [-1, 1]) + {a['kl_weight']} x KL (per latent element).
  Latents of the data set encoded in {r['latents_seconds']} s; scaling factor = 1 / std of sampled latents.
  Reconstructions of {rec['images']} training images: mean abs error {rec['mean_abs_error_8bit']} (of 255), read right {rec['read_right']}/{rec['images']}.
- U-Net and text encoder trained together: AdamW lr {a['lr']}, weight decay 0.01, {a['warmup_steps']} warm-up steps then cosine
  decay to 5% at the time cap; epsilon prediction; min-SNR-gamma weights (gamma {a['snr_gamma']}); {a['caption_dropout']:.0%} of
  captions replaced by "" (classifier-free guidance); offset noise {a['offset_noise']}; gradient norm clipped at 1;
  the weights shipped are the exponential moving average of the training weights (decay {a['ema']}; 0 = the last weights).
- Seed {a['seed']}; {m['torch_threads']} torch threads.

## Machine
{m['cpu']} ({m['cpu_flags'] or 'no AVX flags read'}), {m['cores']} cores; Python {m['python']}, torch {m['torch']}, diffusers {m['diffusers']}, transformers {m['transformers']}.
Total time {r['total_seconds']} s.

## Adherence check
The nine prompts of `sdrt.shapes.CHECKS` with diffusers, {chk['steps']} steps of {chk['scheduler']}, guidance
{chk['guidance']}, 64x64, seeds 1..9 (`torch.Generator().manual_seed(seed)`), read back by `sdrt.shapes.read`:
**{chk['right']}/{chk['total']} right** (all of colour, shape and background). Contact sheet: `adherence.png`.

| seed | prompt | read | right |
|---|---|---|---|
{rows}
"""
    path.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers
    import torch

    from sdrt.export.builtin import clip_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    log = Log(out / "train.log")
    log(f"arguments: {json.dumps(vars(args))}")
    report: dict = {"args": vars(args), "machine": machine_info()}

    # 1. data
    t0 = time.perf_counter()
    images, triples = shapes.make_dataset(args.images, args.seed)
    combos = shapes.combinations()
    report["data"] = {"images": len(images), "seconds": round(time.perf_counter() - t0, 2), "combinations": len(combos),
                      "per_combination": f"{len(images) // len(combos)}-{-(-len(images) // len(combos))}",
                      "held_out": [list(t) for t in shapes.HELD_OUT]}
    log(f"data: {len(images)} images over {len(combos)} combinations in {report['data']['seconds']} s", echo=True)
    shapes.contact_sheet(images[:24], columns=8, scale=2).save(out / "data_sample.png")
    rng = np.random.default_rng(args.seed + 1)

    # 2. VAE, latents and their scale
    if args.reuse_vae:
        vae = diffusers.AutoencoderKL.from_pretrained(out / "vae").eval()
        report["vae"] = json.loads((out / "vae" / "training.json").read_text(encoding="utf-8"))
        log(f"vae: reused {out / 'vae'}", echo=True)
    else:
        vae_log = Log(out / "vae.log")
        vae, report["vae"] = train_vae(images, args, vae_log, rng)
        vae_log.close()
        vae.save_pretrained(out / "vae", safe_serialization=True)
        (out / "vae" / "training.json").write_text(json.dumps(report["vae"], indent=2), encoding="utf-8")
    t0 = time.perf_counter()
    lat_mean, lat_std = encode_latents(vae, images)
    report["latents_seconds"] = round(time.perf_counter() - t0, 1)
    sample = lat_mean + lat_std * torch.randn_like(lat_mean)
    scale = float(1.0 / sample.std())
    vae.register_to_config(scaling_factor=scale)
    report["scaling_factor"] = scale
    report["latent_stats"] = {"mean_per_channel": [round(float(v), 4) for v in sample.mean(dim=(0, 2, 3))],
                              "std_per_channel": [round(float(v), 4) for v in sample.std(dim=(0, 2, 3))],
                              "posterior_std_mean": round(float(lat_std.mean()), 5)}
    report["reconstruction"] = check_reconstructions(vae, images, triples)
    log(f"latents: scaling factor {scale:.5f}, {report['latent_stats']}; reconstructions {report['reconstruction']}",
        echo=True)

    # 3. U-Net + text encoder
    tokenizer = clip_tokenizer(json.loads((ARCH / "tokenizer" / "tokenizer_config.json").read_text(encoding="utf-8")))
    index = {t: i for i, t in enumerate(combos)}
    captions = [shapes.caption(*t) for t in combos]
    caption_index = np.array([index[t] for t in triples], dtype=np.int64)
    unet_log = Log(out / "unet.log")
    unet, text_encoder, report["unet"] = train_unet(lat_mean, lat_std, scale, caption_index, captions, tokenizer, args,
                                                    unet_log, rng)
    unet_log.close()

    # 4. the diffusers folder
    scheduler_config = json.loads((ARCH / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    model_dir = out / "model"
    pipe.save_pretrained(model_dir, safe_serialization=True)
    report["scheduler"] = type(scheduler).__name__
    report["params"] = {"vae": n_params(vae), "unet": n_params(unet), "text_encoder": n_params(text_encoder)}
    log(f"saved {model_dir}; parameters {report['params']}", echo=True)

    # 5. adherence check on the saved folder, as it ships
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(model_dir, local_files_only=True, safety_checker=None,
                                                             requires_safety_checker=False)
    report["check"] = adherence_check(pipe, args, model_dir)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    log(f"adherence: {report['check']['right']}/{report['check']['total']} right", echo=True)
    for d in report["check"]["details"]:
        log(f"  {d}")
    (out / "training.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    write_model_card(model_dir / "MODEL_CARD.md", report)
    log(f"wrote {model_dir / 'MODEL_CARD.md'}; total {report['total_seconds']} s", echo=True)
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
