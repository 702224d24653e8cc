"""The shapes world: drawing, captions, held-out combinations and the reader that checks images."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sdrt import shapes


def test_caption_is_exact():
    assert shapes.caption("red", "circle", "blue") == "a red circle on a blue background"
    assert shapes.caption("yellow", "triangle", "gray") == "a yellow triangle on a gray background"


def test_combinations_leave_out_held_out_and_same_colour():
    seen, every = shapes.combinations(), shapes.combinations(include_held_out=True)
    assert len(every) == len(shapes.COLOURS) * len(shapes.SHAPES) * len(shapes.BACKGROUNDS) - len(shapes.SHAPES)
    assert all(c != b for c, _, b in every)  # no blue shape on blue
    assert 3 <= len(shapes.HELD_OUT) <= 4
    assert set(shapes.HELD_OUT) <= set(every)
    assert not set(shapes.HELD_OUT) & set(seen)
    assert len(seen) == len(every) - len(shapes.HELD_OUT) and len(set(seen)) == len(seen)
    # the adherence check covers every colour, shape and background, and all held-out combinations
    assert len(shapes.CHECKS) == 9 and set(shapes.HELD_OUT) <= set(shapes.CHECKS) <= set(every)
    for i, names in enumerate((shapes.COLOURS, shapes.SHAPES, shapes.BACKGROUNDS)):
        assert {t[i] for t in shapes.CHECKS} == set(names)


def test_draw_is_seeded_and_inside_the_canvas():
    a = shapes.draw("red", "square", "blue", np.random.default_rng(3))
    b = shapes.draw("red", "square", "blue", np.random.default_rng(3))
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    for _ in range(50):
        img = shapes.draw("green", "circle", "black", rng)
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert (border == 0).all()  # the shape never touches the edge
        ys, xs = np.nonzero(img.any(axis=2))
        side = max(np.ptp(ys), np.ptp(xs)) + 1
        assert 0.3 * 64 <= side <= 0.75 * 64
    with pytest.raises(ValueError, match="purple"):
        shapes.draw("purple", "circle", "white", rng)


def test_dataset_is_balanced_and_never_shows_held_out():
    images, triples = shapes.make_dataset(420, seed=1)
    assert images.shape == (420, 64, 64, 3)
    counts = {t: triples.count(t) for t in set(triples)}
    assert set(counts) == set(shapes.combinations()) and set(counts.values()) == {10}
    again, _ = shapes.make_dataset(420, seed=1)
    np.testing.assert_array_equal(images, again)


@pytest.mark.parametrize("size", [64, 96])
def test_reader_reads_every_drawn_combination(size):
    # stars too: the shapes-star LoRA's shape, which the base model never saw
    stars = [(c, shapes.STAR, b) for c in shapes.COLOURS for b in shapes.BACKGROUNDS if c != b]
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for triple in shapes.combinations(include_held_out=True) + stars:
            assert shapes.read(shapes.draw(*triple, rng, size=size)) == triple, (seed, triple)


def test_reader_tolerates_blur_tint_noise_and_speckle():
    # what a generated image looks like: soft edges, a tint, noise, stray pixels
    rng = np.random.default_rng(7)
    wrong = []
    for triple in shapes.combinations(include_held_out=True) * 2:
        img = Image.fromarray(shapes.draw(*triple, rng)).filter(ImageFilter.GaussianBlur(1.5))
        a = np.asarray(img, dtype=np.float64) + rng.normal(0, 8, (64, 64, 3)) + rng.uniform(-20, 20, 3)
        for _ in range(3):
            y, x = rng.integers(0, 62, 2)
            a[y:y + 2, x:x + 2] = rng.integers(0, 256, 3)
        if shapes.read(a.clip(0, 255).astype(np.uint8)) != triple:
            wrong.append(triple)
    assert len(wrong) <= 2, wrong


def test_reader_says_unknown_on_noise_and_blank_images():
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert shapes.read(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) == (None, None, None)
        assert shapes.read(rng.random((64, 64, 3))) == (None, None, None)  # floats in [0, 1]
    blank = np.full((64, 64, 3), 255, np.uint8)
    assert shapes.read(blank) == (None, None, "white")
    assert shapes.read(Image.fromarray(blank).convert("L")) == (None, None, "white")
    speck = blank.copy()
    speck[30:32, 30:32] = (220, 40, 40)  # too small to be a shape
    assert shapes.read(speck).shape is None
    orange = np.full((64, 64, 3), (255, 140, 0), np.uint8)
    assert shapes.read(orange).background is None
    with pytest.raises(ValueError):
        shapes.read(np.zeros((4, 4, 5)))


def test_adherence_counts_all_three_parts():
    rng = np.random.default_rng(5)
    triples = list(shapes.CHECKS)
    images = [shapes.draw(*t, rng) for t in triples]
    n, details = shapes.adherence(images, triples)
    assert n == 9 and all(d["right"] for d in details)
    wrong = [("red", t[1], t[2]) if t[0] != "red" else ("blue", t[1], t[2]) for t in triples[:1]] + triples[1:]
    n, details = shapes.adherence(images, wrong)
    assert n == 8 and not details[0]["right"] and not details[0]["colour"] and details[0]["shape"]


def test_contact_sheet_size():
    rng = np.random.default_rng(0)
    images = [shapes.draw(*t, rng) for t in shapes.CHECKS]
    sheet = shapes.contact_sheet(images, [["a", "b"]] * 9, columns=3, scale=2)
    assert sheet.mode == "RGB" and sheet.width > 3 * 128 and sheet.height > 3 * 128


def test_shapes_imports_no_torch():
    code = "import sys, sdrt.shapes; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
