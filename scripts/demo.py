"""`make demo`: draw a contact sheet of prompts with the built-in `shapes` model on the lean runtime.

Run after `sdrt export shapes FOLDER`. Each tile shows the generated image, its prompt, and what
`sdrt.shapes.read` sees in it; the held-out prompts (never seen in training) are marked. Two rows ask for stars, a
shape the model was never shown: without the shipped `shapes-star` LoRA, then with it. The last two rows give one
prompt three silhouettes (white on black) through the shipped `silhouette` ControlNet: the shape is drawn where each
silhouette is. The last rows draw the nine check prompts again in 4 steps with the shipped `shapes-lcm` LCM-LoRA (the
LCM sampler, guidance 1: one U-Net pass a step, about 12 times less U-Net work than the first rows).
No torch: this is the runtime alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from sdrt import Pipeline
from sdrt.errors import SdrtError
from sdrt.fileio import atomic_path
import numpy as np

from sdrt.shapes import CHECKS, HELD_OUT, STAR, analyse, caption, draw_with_silhouette, read

TILE = 192  # each 64x64 image is shown 3x larger
TEXT_H = 56


def contact_sheet(tiles: list[tuple[Image.Image, list[tuple[str, str]]]], columns: int) -> Image.Image:
    """Images in a grid, each with lines of (text, colour) under it."""
    font = ImageFont.load_default(size=13)
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + TEXT_H)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, lines) in enumerate(tiles):
        x, y = (i % columns) * TILE, (i // columns) * (TILE + TEXT_H)
        sheet.paste(image.resize((TILE, TILE), Image.Resampling.BICUBIC), (x, y))
        for j, (text, colour) in enumerate(lines):
            draw.text((x + 4, y + TILE + 3 + 16 * j), text, fill=colour, font=font)
    return sheet


# the star row: prompts the base model cannot draw, without and with the shipped shapes-star LoRA
STARS = (("red", STAR, "blue"), ("yellow", STAR, "black"), ("green", STAR, "white"))
STAR_LORA = "<lora:shapes-star:1>"


# the few-step rows: the check prompts in 4 steps with the shipped LCM-LoRA, as LCM is run
LCM_LORA = "<lora:shapes-lcm:1>"
LCM = dict(steps=4, guidance=1.0, sampler="lcm")


def tile(pipe, triple: tuple[str, str, str], seed: int, args, note: str = "",
         lora: str = "", steps: int | None = None, guidance: float | None = None,
         sampler: str | None = None) -> tuple[Image.Image, list[tuple[str, str]], bool]:
    """One generated image with its prompt and what the reader sees in it, and whether that is what was asked
    (at the demo's steps, guidance and sampler unless given)."""
    prompt = caption(*triple)
    result = pipe(f"{prompt} {lora}".strip(), num_inference_steps=steps or args.steps,
                  guidance_scale=args.guidance if guidance is None else guidance, scheduler=sampler or args.sampler,
                  seed=seed)
    seen = read(result.images[0])
    ok = tuple(seen) == triple
    head, _, tail = prompt.partition(" on ")
    words = " ".join(part or "?" for part in seen)
    lines = [(head + note, "black"), ("on " + tail, "black"), (f"reads as: {words}", "darkgreen" if ok else "firebrick")]
    return result.images[0], lines, ok


# the ControlNet rows: one prompt, three silhouettes at other places and sizes
SILHOUETTE_PROMPT = ("red", "circle", "blue")
SILHOUETTE_SEEDS = (3, 7, 11)
CENTRE_TOLERANCE = 4.0  # pixels: as the ControlNet's own check (scripts/train_shapes_controlnet.py)


def silhouette_tiles(pipe, seed: int, args) -> list[tuple[Image.Image, list[tuple[str, str]], bool]]:
    """The silhouettes, then the images the prompt gives with each: where the reader finds the shape."""
    silhouettes = [draw_with_silhouette(*SILHOUETTE_PROMPT, np.random.default_rng(s))[1] for s in SILHOUETTE_SEEDS]
    given, drawn = [], []
    for i, silhouette in enumerate(silhouettes):
        want = analyse(silhouette).centre
        result = pipe(caption(*SILHOUETTE_PROMPT), num_inference_steps=args.steps, guidance_scale=args.guidance,
                      scheduler=args.sampler, seed=seed + i, control_image=Image.fromarray(silhouette),
                      controlnet="silhouette")
        got = analyse(result.images[0])
        offset = None if got.centre is None else float(np.hypot(*np.subtract(got.centre, want)))
        ok = offset is not None and offset <= CENTRE_TOLERANCE and tuple(got.reading)[::2] == SILHOUETTE_PROMPT[::2]
        given.append((Image.fromarray(silhouette), [(f"silhouette {i + 1}", "black"),
                                                    (f"centre ({want[0]:.0f}, {want[1]:.0f})", "black")], True))
        words = " ".join(part or "?" for part in got.reading)
        drawn.append((result.images[0], [(caption(*SILHOUETTE_PROMPT).partition(" on ")[0] + f" + silhouette {i + 1}", "black"),
                                         (f"reads as: {words}", "black"),
                                         ("no shape" if offset is None else f"{offset:.1f} px from its centre",
                                          "darkgreen" if ok else "firebrick")], ok))
    return given + drawn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="export folder of the shapes model")
    parser.add_argument("--out", default="build/demo/contact_sheet.png")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--sampler", default="dpm++2m")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    try:
        with Pipeline.load(args.folder, backend=args.backend) as pipe:
            checks = [tile(pipe, t, args.seed + i, args, " (held out)" if t in HELD_OUT else "")
                      for i, t in enumerate(CHECKS)]
            has_star = "shapes-star" in pipe.loras.available()
            stars = [tile(pipe, t, args.seed + i, args, note, lora) for note, lora in
                     (("", ""), (" + LoRA", STAR_LORA)) for i, t in enumerate(STARS)] if has_star else []
            has_silhouette = "controlnet.silhouette" in pipe.manifest.components
            placed = silhouette_tiles(pipe, args.seed, args) if has_silhouette else []
            has_lcm = "shapes-lcm" in pipe.loras.available()
            fast = [tile(pipe, t, args.seed + i, args, " (4 steps)", LCM_LORA, **LCM)
                    for i, t in enumerate(CHECKS)] if has_lcm else []
            sheet = contact_sheet([(image, lines) for image, lines, _ in checks + stars + placed + fast], columns=3)
    except SdrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    print(f"{sum(ok for *_, ok in checks)} of {len(CHECKS)} images show what their prompt asked for "
          f"({args.steps} steps, {args.sampler}, guidance {args.guidance:g}, {pipe.backend.name} on {pipe.backend.device})")
    if stars:
        print(f"stars: {sum(ok for *_, ok in stars[:len(STARS)])} of {len(STARS)} without the shapes-star LoRA, "
              f"{sum(ok for *_, ok in stars[len(STARS):])} of {len(STARS)} with {STAR_LORA}")
    if placed:
        print(f"silhouettes: {sum(ok for *_, ok in placed[len(SILHOUETTE_SEEDS):])} of {len(SILHOUETTE_SEEDS)} drawn "
              f"within {CENTRE_TOLERANCE:g} px of their silhouette's centre, in the prompt's colour and background")
    if fast:
        print(f"{sum(ok for *_, ok in fast)} of {len(CHECKS)} right in {LCM['steps']} steps with {LCM_LORA} "
              f"({LCM['sampler']}, guidance {LCM['guidance']:g})")
    print(f"contact sheet: {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
