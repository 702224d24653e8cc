import numpy as np
from PIL import Image

from sdrt.runtime.images import read_parameters, save_png, to_pil
from sdrt.runtime.infotext import infotext


def test_to_pil_rounds_like_diffusers():
    x = np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, -3.0, 0.001], dtype=np.float32).reshape(1, 1, 1, 8).repeat(3, axis=1)
    (img,) = to_pil(x)
    expected = (np.clip(x[0, 0, 0] / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(img)[0, :, 0], expected)
    assert img.size == (8, 1) and img.mode == "RGB"


def test_infotext_is_automatic1111_format():
    text = infotext("a cat", "blurry, dark", steps=20, sampler="DPM++ 2M", cfg_scale=7.0, seed=42,
                    width=512, height=768, model_hash="0123456789")
    assert text == (
        "a cat\nNegative prompt: blurry, dark\n"
        "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 42, Size: 512x768, Model hash: 0123456789"
    )
    assert "Negative prompt" not in infotext("a cat", "", steps=1, sampler="DDIM", cfg_scale=7.5, seed=1,
                                              width=8, height=8, model_hash="x")


def test_png_carries_parameters(tmp_path):
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "a.png", "a cat\nSteps: 1")
    assert read_parameters(path) == "a cat\nSteps: 1"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary file left behind
