import numpy as np
import pytest

from sdrt.manifest import load_manifest
from sdrt.runtime.tokenizer import ClipTokenizer

PROMPTS = [
    "",
    "a photo of an astronaut riding a horse on mars",
    "A RED Circle, on a blue background!!  (masterpiece:1.2), [blurry]",
    "naïve café — déjà vu 🙂 東京 1234567 it's don't we'll",
    "tabs\tand\nnewlines   and    spaces",
    "word " * 100,  # past 75 tokens: truncated
]


@pytest.mark.parametrize("model", ["tiny", "tiny-sd2"])
def test_ids_equal_transformers(export_dir, reference_pipeline, model):
    folder = export_dir(model)
    manifest = load_manifest(folder)
    ours = ClipTokenizer(folder, manifest.tokenizers["tokenizer"])(PROMPTS)
    reference = reference_pipeline(model).tokenizer(
        PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="np"
    ).input_ids
    assert ours.dtype == np.int32 and ours.shape == (len(PROMPTS), 77)
    np.testing.assert_array_equal(ours, reference)


def test_long_prompt_is_truncated_with_warning(export_dir, caplog):
    folder = export_dir("tiny")
    tok = ClipTokenizer(folder, load_manifest(folder).tokenizers["tokenizer"])
    ids = tok(["one two three " * 40])
    assert ids[0, -1] == tok.spec.eos_token_id and ids[0, 0] == tok.spec.bos_token_id
    assert "was dropped" in caplog.text
