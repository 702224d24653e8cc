"""AUTOMATIC1111's prompt weighting and long prompts: the parser, the chunking, and the embeddings end to end."""

import numpy as np
import pytest
import torch

from sdrt.manifest import load_manifest
from sdrt.runtime import Pipeline
from sdrt.runtime.prompts import apply_weights, parse_prompt_attention, tokenize_prompt
from sdrt.runtime.tokenizer import ClipTokenizer

from parity_helpers import use_sampler


@pytest.mark.parametrize(
    "text,expected",
    [  # AUTOMATIC1111's own doctest cases (modules/prompt_parser.py)
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
             (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)],
        ),
        ("[word]", [("word", 1 / 1.1)]),
        ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
        ("(word:0)", [("word", 0.0)]),
        ("(word: -1.5 )", [("word", -1.5)]),
        ("a:b", [("a:b", 1.0)]),
        ("\\\\slash", [("\\slash", 1.0)]),
        ("one BREAK two", [("one", 1.0), ("BREAK", -1.0), ("two", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_parse_prompt_attention(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    np.testing.assert_allclose([w for _, w in got], [w for _, w in expected], rtol=1e-12)


@pytest.fixture(scope="module")
def tokenizer(export_dir):
    folder = export_dir("tiny")
    return ClipTokenizer(folder, load_manifest(folder).tokenizers["tokenizer"])


def test_short_prompt_tokenizes_as_diffusers(tokenizer):
    for text in ("", "a photo of an astronaut riding a horse", "A RED circle, (on) a [blue] background"):
        chunks = tokenize_prompt(tokenizer, text, weighting=False)
        np.testing.assert_array_equal(chunks.ids, tokenizer([text]))
        assert (chunks.weights == 1).all()


def test_weights_sit_on_their_tokens(tokenizer):
    chunks = tokenize_prompt(tokenizer, "a (red:1.5) circle [on] a blue background")
    words = [tokenizer.tokens(w)[0] for w in ("a", "red", "circle", "on")]
    ids, weights = chunks.ids[0], chunks.weights[0]
    assert list(ids[1:5]) == words
    np.testing.assert_allclose(weights[:6], [1, 1, 1.5, 1, 1 / 1.1, 1], rtol=1e-6)
    assert (weights[6:] == 1).all()


def test_long_prompt_is_split_in_chunks_of_75(tokenizer):
    text = " ".join(f"word{i}" for i in range(120))
    n_tokens = len(tokenizer.tokens(text))
    chunks = tokenize_prompt(tokenizer, text)
    assert len(chunks) == -(-n_tokens // 75) > 1
    s = tokenizer.spec
    assert (chunks.ids[:, 0] == s.bos_token_id).all() and chunks.ids.shape[1] == 77
    body = [t for row in chunks.ids for t in row[1:76] if t not in (s.eos_token_id, s.pad_token_id)]
    assert body == tokenizer.tokens(text)  # every token, in order, none dropped


def test_chunk_ends_at_a_comma_rather_than_mid_phrase(tokenizer):
    # 70 one-token words, a comma, then a 10-word phrase: the phrase moves whole to the second chunk
    first = " ".join(["cat"] * 70) + ","
    phrase = " ".join(["dog"] * 10)
    chunks = tokenize_prompt(tokenizer, f"{first} {phrase}")
    cat, dog, comma = (tokenizer.tokens(w)[0] for w in ("cat", "dog", ","))
    assert len(chunks) == 2
    assert list(chunks.ids[0][1:72]) == [cat] * 70 + [comma] and dog not in chunks.ids[0]
    assert list(chunks.ids[1][1:11]) == [dog] * 10


def test_break_starts_a_new_chunk(tokenizer):
    chunks = tokenize_prompt(tokenizer, "a red circle BREAK on a blue background")
    assert len(chunks) == 2
    assert tokenizer.tokens("blue")[0] in chunks.ids[1] and tokenizer.tokens("blue")[0] not in chunks.ids[0]


def test_apply_weights_keeps_the_mean():
    hidden = np.random.default_rng(0).standard_normal((2, 77, 16)).astype(np.float32) + 0.3
    weights = np.ones((2, 77), np.float32)
    assert apply_weights(hidden, weights) is hidden
    weights[0, 3] = 1.5
    out = apply_weights(hidden, weights)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), hidden.mean(axis=(1, 2)), rtol=1e-5)
    ratio = out[0, 3] / hidden[0, 3]
    np.testing.assert_allclose(ratio / (out[0, 2] / hidden[0, 2]), 1.5, rtol=1e-4)
    np.testing.assert_array_equal(out[1], hidden[1])


def test_apply_weights_on_zero_mean_states_only_weighs():
    """A final layer norm without bias (random-weight models) gives chunks of mean ~0: no rescaling by noise."""
    hidden = np.random.default_rng(1).standard_normal((1, 77, 16)).astype(np.float32)
    hidden -= hidden.mean(axis=2, keepdims=True)
    weights = np.ones((1, 77), np.float32)
    weights[0, 5] = 1.3
    out = apply_weights(hidden, weights)
    np.testing.assert_allclose(out, hidden * weights[:, :, None], rtol=1e-6)


def a1111_embeddings(pipe, weighting_chunks) -> torch.Tensor:
    """AUTOMATIC1111's conditioning in torch: each chunk through the text encoder, weighted, rescaled (unless the
    means are rounding noise, see apply_weights), concatenated."""
    out = []
    for ids, weights in zip(weighting_chunks.ids, weighting_chunks.weights):
        with torch.no_grad():
            z = pipe.text_encoder(torch.from_numpy(ids[None].astype(np.int64)))[0]
        original_mean, size = z.mean(), z.abs().mean()
        weighted = z * torch.from_numpy(weights)[None, :, None]
        if original_mean.abs() > 1e-4 * size and weighted.mean().abs() > 1e-4 * size:  # see apply_weights
            weighted = weighted * (original_mean / weighted.mean())
        out.append(weighted)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("model", ["tiny", "shapes"])  # random weights (chunk means ~0); trained (rescaled)
def test_long_weighted_prompt_matches_a1111_conditioning_through_diffusers(export_dir, reference_pipeline, tokenizer, model):
    """A 200-token weighted prompt and a short negative one (padded to the same length with the empty prompt) give
    the image diffusers gives from the same conditioning computed in torch, with 77·4 tokens into the U-Net."""
    prompt = "a (red:1.3) circle, [blurry], " + ", ".join(f"(detail{i})" for i in range(60))
    negative = "dark, (ugly:1.2)"
    pos = tokenize_prompt(tokenizer, prompt)
    assert sum(len(tokenizer.tokens(text)) for text, _ in parse_prompt_attention(prompt)) > 200
    neg = tokenize_prompt(tokenizer, negative).padded(len(pos), tokenize_prompt(tokenizer, ""))
    ref = reference_pipeline(model)
    use_sampler(ref, "ddim")
    factor = load_manifest(export_dir(model)).vae_scale_factor
    latents = np.random.default_rng(1).standard_normal((1, 4, 64 // factor, 64 // factor), dtype=np.float32)
    with torch.no_grad():
        expected = ref(prompt_embeds=a1111_embeddings(ref, pos), negative_prompt_embeds=a1111_embeddings(ref, neg),
                       latents=torch.from_numpy(latents), num_inference_steps=6, height=64, width=64,
                       output_type="latent").images.numpy()
    with Pipeline.load(export_dir(model)) as pipe:
        ours = pipe(prompt, negative_prompt=negative, latents=latents, num_inference_steps=6, height=64, width=64,
                    scheduler="ddim")
        plain = pipe(prompt, negative_prompt=negative, latents=latents, num_inference_steps=6, height=64, width=64,
                     scheduler="ddim", weighting=False)
    assert len(pos) == 4
    rel = np.abs(ours.latents - expected).max() / np.abs(expected).max()
    assert rel < 1e-4, f"relative error {rel:.2e}"
    assert not np.allclose(plain.latents, ours.latents)  # the weights do something
    assert "Emphasis: None" in plain.parameters[0] and "Emphasis" not in ours.parameters[0]


def test_prompts_of_different_lengths_in_one_batch(export_dir):
    with Pipeline.load(export_dir("tiny")) as pipe:
        result = pipe(["short", "long " * 100], num_inference_steps=2, height=64, width=64, seed=0)
    assert len(result.images) == 2 and np.isfinite(result.latents).all()

