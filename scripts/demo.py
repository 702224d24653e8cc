"""`make demo`: draw a contact sheet of prompts with the built-in `shapes` model on the lean runtime.

Run after `sdrt export shapes FOLDER`. Each tile shows the generated image, its prompt, and what
`sdrt.shapes.read` sees in it; the held-out prompts (never seen in training) are marked.
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
from sdrt.shapes import CHECKS, HELD_OUT, caption, read

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
            tiles, right = [], 0
            for i, triple in enumerate(CHECKS):
                prompt = caption(*triple)
                result = pipe(prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
                              scheduler=args.sampler, seed=args.seed + i)
                seen = read(result.images[0])
                ok = tuple(seen) == triple
                right += ok
                words = " ".join(part or "?" for part in seen)
                tag = " (held out)" if triple in HELD_OUT else ""
                head, _, tail = prompt.partition(" on ")
                lines = [(head + tag, "black"), ("on " + tail, "black"),
                         (f"reads as: {words}", "darkgreen" if ok else "firebrick")]
                tiles.append((result.images[0], lines))
            sheet = contact_sheet(tiles, columns=3)
    except SdrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    print(f"{right} of {len(CHECKS)} images show what their prompt asked for "
          f"({args.steps} steps, {args.sampler}, guidance {args.guidance:g}, {pipe.backend.name} on {pipe.backend.device})")
    print(f"contact sheet: {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
