"""The world of the built-in ``shapes`` model: coloured shapes drawn on plain backgrounds.

One module holds everything the model was trained on and everything needed to check what it
draws: the palette, the caption template, the drawing of a training image, the combinations
held out of training, and a reader that tells colour, shape and background back from an image
(made by :func:`draw`, or generated, so slightly noisy and imperfect).

numpy and Pillow only: the runtime, the tests and the benchmarks import it, never torch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import product
from typing import Iterable, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# -- the world ----------------------------------------------------------------------------------

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 205, 40),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
STAR = "star"  # never shown to the base model: the shapes-star LoRA teaches it (scripts/train_shapes_lora.py)
BACKGROUNDS: tuple[str, ...] = ("white", "black", "gray", "blue")

# Never drawn for training: the model has to compose them from what it saw.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("yellow", "triangle", "black"),
    ("red", "square", "gray"),
    ("green", "circle", "white"),
)

# The nine prompts of the adherence check (the three held-out ones first): every colour, shape
# and background appears at least twice.
CHECKS: tuple[tuple[str, str, str], ...] = HELD_OUT + (
    ("blue", "circle", "black"),
    ("red", "triangle", "white"),
    ("yellow", "square", "blue"),
    ("green", "triangle", "gray"),
    ("blue", "square", "white"),
    ("red", "circle", "blue"),
)

CAPTION_TEMPLATE = "a {colour} {shape} on a {background} background"
SIZE_RANGE = (0.35, 0.70)  # side of the shape's bounding box, as a fraction of the image side
_MARGIN = 2  # pixels kept free between the shape and the image edge
_SUPERSAMPLE = 4  # drawn this many times larger, then box-filtered down: anti-aliased edges


def caption(colour: str, shape: str, background: str) -> str:
    """The training caption: ``"a red circle on a blue background"``."""
    return CAPTION_TEMPLATE.format(colour=colour, shape=shape, background=background)


def combinations(include_held_out: bool = False) -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) where the shape's colour differs from the background's,
    in a fixed order; without the :data:`HELD_OUT` ones unless asked."""
    return [
        (c, s, b)
        for c, s, b in product(COLOURS, SHAPES, BACKGROUNDS)
        if c != b and (include_held_out or (c, s, b) not in HELD_OUT)
    ]


def draw(colour: str, shape: str, background: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One image, uint8 [size, size, 3]: the shape at a random position and size, fully inside.

    Circles and squares are axis-aligned in a square bounding box; triangles and five-pointed stars stand upright
    (a point at the top), so each fills a known share of its box.
    """
    return draw_with_silhouette(colour, shape, background, rng, size)[0]


def draw_with_silhouette(colour: str, shape: str, background: str, rng: np.random.Generator, size: int = 64
                         ) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`draw`, with the shape's silhouette (white on black, the same place and size): what the
    ``silhouette`` ControlNet is trained on (scripts/train_shapes_controlnet.py)."""
    for name, kind in ((colour, COLOURS), (shape, SHAPES + (STAR,)), (background, BACKGROUNDS)):
        if name not in kind:
            raise ValueError(f"{name!r} is not one of {', '.join(kind)}.")
    side = rng.uniform(*SIZE_RANGE) * size
    x0 = rng.uniform(_MARGIN, size - _MARGIN - side)
    y0 = rng.uniform(_MARGIN, size - _MARGIN - side)
    box = [x0, y0, x0 + side, y0 + side]
    return render(shape, box, PALETTE[colour], PALETTE[background], size), render(shape, box, WHITE, BLACK, size)


WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def render(shape: str, box: list[float], fill: tuple, background: tuple, size: int = 64) -> np.ndarray:
    """``shape`` filling the square ``box`` (x0, y0, x1, y1 in pixels) in ``fill`` on ``background``: uint8
    [size, size, 3], drawn larger and box-filtered down (anti-aliased edges)."""
    k = _SUPERSAMPLE
    box = [box[0] * k, box[1] * k, box[2] * k - 1, box[3] * k - 1]
    canvas = Image.new("RGB", (size * k, size * k), background)
    pen = ImageDraw.Draw(canvas)
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    elif shape == STAR:
        pen.polygon(_star_points(box), fill=fill)
    else:
        pen.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=fill)
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.uint8).copy()


def _star_points(box: list[float]) -> list[tuple[float, float]]:
    """A regular five-pointed star (inner radius 0.382 of the outer), one point up, filling ``box``'s width."""
    x0, y0, x1, y1 = box
    outer = (x1 - x0) / (2 * np.sin(2 * np.pi / 5))
    cx, cy = (x0 + x1) / 2, y0 + outer
    points = []
    for k in range(10):
        radius = outer if k % 2 == 0 else outer * 0.382
        angle = np.pi * k / 5
        points.append((cx + radius * np.sin(angle), cy - radius * np.cos(angle)))
    return points


def make_dataset(n: int, seed: int, size: int = 64, include_held_out: bool = False):
    """``n`` images balanced over :func:`combinations` (each appears ``n // len`` or one more
    times, in a shuffled order), all from ``seed``. Returns (uint8 [n, size, size, 3], triples)."""
    rng = np.random.default_rng(seed)
    combos = combinations(include_held_out)
    triples = [combos[i % len(combos)] for i in range(n)]
    order = rng.permutation(n)
    triples = [triples[i] for i in order]
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, (c, s, b) in enumerate(triples):
        images[i] = draw(c, s, b, rng, size)
    return images, triples


# -- the reader ---------------------------------------------------------------------------------

class Reading(NamedTuple):
    """What an image shows; a part that cannot be told is None. Compares equal to a plain tuple."""

    colour: str | None
    shape: str | None
    background: str | None


@dataclass(frozen=True)
class Analysis:
    """A reading with the measurements behind it (for reports and for tuning the thresholds)."""

    reading: Reading
    background_rgb: tuple[float, float, float]
    background_uniformity: float  # share of border pixels close to the border's median colour
    shape_rgb: tuple[float, float, float] | None
    area: int  # pixels of the shape (its largest connected region, holes filled)
    fill: float | None  # area / bounding-box area: circle ~0.785, square ~1, triangle ~0.5, star ~0.4
    top_share: float | None  # share of the area in the upper half of the bounding box: triangle ~0.29, else 0.5
    aspect: float | None  # bounding box, long side / short side
    centre: tuple[float, float] | None = None  # (x, y) of the bounding box's centre, in pixels


# Thresholds, in RGB distance (0..441) unless said otherwise; tolerant on purpose, since
# generated images have soft edges, tints and speckle.
_BORDER_CLOSE = 48.0  # a border pixel this close to the border's median counts as background
_MIN_UNIFORMITY = 0.6  # below this share the border is not one plain colour: background unknown
_BACKGROUND_TOL = 90.0  # farther than this from every background colour: unknown
_COLOUR_TOL = 120.0  # farther than this from every shape colour: unknown
_FIRST_PASS = 50.0  # a pixel this far from the background is shape, before the shape colour is known
_MIN_AREA = 0.015  # of the image: smaller regions are speckle, not a shape
_MAX_ASPECT = 2.0  # our shapes have square bounding boxes; far from it is no shape we know


# An upright triangle has a quarter of its area in the upper half of its bounding box, a circle
# or a square half of it; a circle fills pi/4 of its box, a square all of it. Measured on drawn
# images blurred (Gaussian, radius up to 3 px), tinted and noised: top share 0.27-0.37 for
# triangles, 0.48-0.54 for the others; fill 0.72-0.83 for circles, 0.87-1.0 for squares.
_STAR_SOLIDITY = 0.8  # area / convex hull's area below this: a star (~0.6; the other shapes, convex, ~1)
_TRIANGLE_TOP_SHARE = 0.42  # below: triangle
_SQUARE_FILL = 0.85  # otherwise, at or above: square, below: circle


def _as_rgb_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    src = np.asarray(image)
    if src.ndim == 2:
        src = np.repeat(src[:, :, None], 3, axis=2)
    if src.ndim != 3 or src.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image [H, W, 3], got an array of shape {src.shape}.")
    a = src[:, :, :3].astype(np.float32)
    if np.issubdtype(src.dtype, np.floating) and a.size and float(a.max()) <= 1.0:
        a *= 255.0
    return a


def _nearest(rgb: np.ndarray, names: Sequence[str]) -> tuple[str, float]:
    d = [float(np.linalg.norm(rgb - np.asarray(PALETTE[n], np.float32))) for n in names]
    i = int(np.argmin(d))
    return names[i], d[i]


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean mask: (labels, count); label 0 is outside the mask."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    flat_mask, flat = mask.ravel(), labels.ravel()
    count = 0
    for start in np.flatnonzero(flat_mask):
        if flat[start]:
            continue
        count += 1
        flat[start] = count
        queue = deque([int(start)])
        while queue:
            p = queue.popleft()
            y, x = divmod(p, w)
            for q, ok in ((p - w, y > 0), (p + w, y < h - 1), (p - 1, x > 0), (p + 1, x < w - 1)):
                if ok and flat_mask[q] and not flat[q]:
                    flat[q] = count
                    queue.append(q)
    return labels, count


def _erode(mask: np.ndarray, dilate: bool = False) -> np.ndarray:
    """3x3 erosion (or dilation); outside the image counts as not in the mask."""
    p = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    out = mask.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dilate:
                out |= p[dy:dy + h, dx:dx + w]
            else:
                out &= p[dy:dy + h, dx:dx + w]
    return out


def _largest_region(mask: np.ndarray, open_first: bool = False) -> np.ndarray:
    """The largest connected region of ``mask``, with its holes filled; ``open_first``: after a
    3x3 opening, which removes speckle and one-pixel spurs but keeps a square's corners."""
    if open_first:
        mask = _erode(_erode(mask), dilate=True)
    labels, count = _components(mask)
    if count == 0:
        return mask & False
    sizes = np.bincount(labels.ravel())[1:]
    region = labels == (int(np.argmax(sizes)) + 1)
    # holes: parts of the complement that do not reach the image edge
    outside, _ = _components(~region)
    edge = np.unique(np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]]))
    holes = ~region & ~np.isin(outside, edge)
    return region | holes


def analyse(image) -> Analysis:
    """Read colour, shape and background from an RGB image (PIL, or an array [H, W, 3] of uint8,
    or floats in [0, 1]) and return the measurements with the reading."""
    a = _as_rgb_array(image)
    h, w = a.shape[:2]
    border = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    bg = np.median(border, axis=0)
    uniformity = float(np.mean(np.linalg.norm(border - bg, axis=1) <= _BORDER_CLOSE))
    bg_name, bg_dist = _nearest(bg, BACKGROUNDS)
    background = bg_name if bg_dist <= _BACKGROUND_TOL and uniformity >= _MIN_UNIFORMITY else None
    bg_rgb = tuple(round(float(v), 1) for v in bg)
    if uniformity < _MIN_UNIFORMITY:  # no plain background: nothing else can be told either
        return Analysis(Reading(None, None, background), bg_rgb, uniformity, None, 0, None, None, None)

    dist = np.linalg.norm(a - bg, axis=2)
    # pass 1: a rough region, to learn the shape's colour
    region = _largest_region(dist > _FIRST_PASS)
    if region.sum() < _MIN_AREA * h * w:
        return Analysis(Reading(None, None, background), bg_rgb, uniformity, None, int(region.sum()), None, None,
                        None)
    core = region & (dist >= 0.75 * np.percentile(dist[region], 90))
    fg = np.median(a[core if core.any() else region], axis=0)
    # pass 2: cut halfway between background and shape colour, where an anti-aliased edge
    # covers half a pixel, so the area is not biased by the edge
    contrast = float(np.linalg.norm(fg - bg))
    region = _largest_region(dist > max(0.5 * contrast, 0.5 * _FIRST_PASS), open_first=True)
    area = int(region.sum())
    fg_rgb = tuple(round(float(v), 1) for v in fg)
    if area < _MIN_AREA * h * w:
        return Analysis(Reading(None, None, background), bg_rgb, uniformity, fg_rgb, area, None, None, None)

    c_name, c_dist = _nearest(fg, COLOURS)
    colour = c_name if c_dist <= _COLOUR_TOL else None

    ys, xs = np.nonzero(region)
    top, left = int(ys.min()), int(xs.min())
    bh, bw = int(ys.max()) - top + 1, int(xs.max()) - left + 1
    fill = area / float(bh * bw)
    rows = region[top:top + bh, left:left + bw].sum(axis=1).astype(np.float64)
    top_share = (rows[: bh // 2].sum() + (rows[bh // 2] / 2 if bh % 2 else 0.0)) / area
    aspect = max(bh, bw) / min(bh, bw)
    solidity = area / _hull_area(region)
    whole_image = bh >= h - 1 and bw >= w - 1
    if aspect > _MAX_ASPECT or whole_image:
        shape = None
    else:
        shape = (STAR if solidity < _STAR_SOLIDITY else "triangle" if top_share < _TRIANGLE_TOP_SHARE
                 else "square" if fill >= _SQUARE_FILL else "circle")
    return Analysis(Reading(colour, shape, background), bg_rgb, uniformity, fg_rgb, area, round(fill, 3),
                    round(float(top_share), 3), round(aspect, 3), (left + (bw - 1) / 2, top + (bh - 1) / 2))


def _hull_area(region: np.ndarray) -> float:
    """The area of the convex hull of a region's pixels (their corners), by Andrew's monotone chain."""
    ys, xs = np.nonzero(region)
    corners = {(x + dx, y + dy) for x, y in zip(xs.tolist(), ys.tolist()) for dx in (0, 1) for dy in (0, 1)}
    points = sorted(corners)

    def half(pts):
        chain: list[tuple[int, int]] = []
        for p in pts:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                                       - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = half(points) + half(points[::-1])
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(hull, hull[1:] + hull[:1])))


def read(image) -> Reading:
    """(colour, shape, background) of an image; each part None where it cannot be told."""
    return analyse(image).reading


def adherence(images: Iterable, prompts_triples: Iterable[Sequence[str]]) -> tuple[int, list[dict]]:
    """How many images show what their (colour, shape, background) asked for, all three right.

    Returns (n_right, details): per image the expected and the read triple, which parts were
    right, and the measurements behind the reading."""
    details = []
    for image, expected in zip(images, prompts_triples, strict=True):
        expected = tuple(expected)
        found = analyse(image)
        got = found.reading
        parts = {part: got[i] == expected[i] for i, part in enumerate(Reading._fields)}
        details.append({
            "expected": expected,
            "read": tuple(got),
            "right": all(parts.values()),
            **parts,
            "fill": found.fill,
            "top_share": found.top_share,
            "aspect": found.aspect,
            "area": found.area,
            "background_uniformity": round(found.background_uniformity, 3),
        })
    return sum(d["right"] for d in details), details


def contact_sheet(images: Sequence, labels: Sequence[Sequence[str]] | None = None, columns: int = 3,
                  scale: int = 3) -> Image.Image:
    """The images in a grid, each enlarged ``scale`` times (nearest neighbour, so pixels stay
    visible), with up to three lines of (ASCII) text under each."""
    tiles = [Image.fromarray(np.asarray(_as_rgb_array(im)).round().clip(0, 255).astype(np.uint8)) for im in images]
    if not tiles:
        raise ValueError("contact_sheet needs at least one image.")
    cell_w = max(t.width for t in tiles) * scale
    cell_h = max(t.height for t in tiles) * scale
    font = ImageFont.load_default()
    line_h = 12
    n_lines = max((len(lbl) for lbl in labels), default=0) if labels else 0
    pad = 6
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * (cell_w + pad) + pad, rows * (cell_h + n_lines * line_h + pad) + pad),
                      (210, 210, 210))  # light gray: white images stay visible
    pen = ImageDraw.Draw(sheet)
    for i, tile in enumerate(tiles):
        x = pad + (i % columns) * (cell_w + pad)
        y = pad + (i // columns) * (cell_h + n_lines * line_h + pad)
        sheet.paste(tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST), (x, y))
        for j, line in enumerate(labels[i] if labels else ()):
            pen.text((x, y + cell_h + 1 + j * line_h), line, fill=(0, 0, 0), font=font)
    return sheet
