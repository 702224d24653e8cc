"""Textual-inversion embeddings, against diffusers' ``load_textual_inversion`` from a seed alone (SD 1.x with
AUTOMATIC1111's and diffusers' file formats, one and several vectors, in the prompt and the negative prompt; SDXL's
clip_l / clip_g pairs), and AUTOMATIC1111's rules: names found by their tokens, the longest first, vectors moved
whole to the next chunk, files that do not fit skipped with the reason; SD 3's and Flux's CLIP encoders, exactly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdrt.embeddings.files import read_embedding
from sdrt.embeddings.library import EmbeddingLibrary
from sdrt.errors import UserInputError
from sdrt.manifest import load_manifest
from sdrt.runtime import Pipeline
from sdrt.runtime.prompts import tokenize_prompt
from sdrt.runtime.tokenizer import ClipTokenizer

from parity_helpers import psnr, use_sampler

KW = dict(num_inference_steps=4, height=64, width=64, guidance_scale=6.0)


def _vectors(count: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    """zebrastyle: AUTOMATIC1111's safetensors (``emb_params``, 3 vectors); glowy: diffusers' one vector
    (``{"<glowy>": [D]}``); xlstyle: SDXL's clip_l + clip_g (2 vectors); wide: a 1024-wide vector (SD 2.x's)."""
    folder = tmp_path_factory.mktemp("embeddings")
    save_file({"emb_params": _vectors(3, 32, 1)}, folder / "zebrastyle.safetensors")
    save_file({"<glowy>": _vectors(1, 32, 2)[0]}, folder / "glowy.safetensors")
    save_file({"clip_l": _vectors(2, 32, 3), "clip_g": _vectors(2, 64, 4)}, folder / "xlstyle.safetensors")
    save_file({"emb_params": _vectors(1, 1024, 5)}, folder / "wide.safetensors")
    return folder


def _diffusers_image(reference, files: dict, prompt: str, negative: str | None = None, seed: int = 3) -> np.ndarray:
    """diffusers with the embeddings ``files`` ({name: [(tensor, text encoder, tokenizer attribute)]}) loaded."""
    pipe = copy.deepcopy(reference)
    for name, parts in files.items():
        for vectors, encoder, tokenizer in parts:
            pipe.load_textual_inversion(vectors, token=name, text_encoder=getattr(pipe, encoder),
                                        tokenizer=getattr(pipe, tokenizer))
    use_sampler(pipe, "euler")
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe(prompt, negative_prompt=negative, generator=torch.Generator().manual_seed(seed), output_type="np",
                   **KW)
    return (out.images[0] * 255).round().astype(np.uint8)


def test_sd1_embeddings_match_diffusers(export_dir, reference_pipeline, embeddings):
    prompt, negative = "a red circle in zebrastyle on a blue background", "glowy, blurry"
    files = {name: [(read_embedding(embeddings / f"{name}.safetensors").vectors[""], "text_encoder", "tokenizer")]
             for name in ("zebrastyle", "glowy")}
    expected = _diffusers_image(reference_pipeline("tiny"), {n: [(torch.from_numpy(v), e, t) for v, e, t in p]
                                                             for n, p in files.items()}, prompt, negative)
    with Pipeline.load(export_dir("tiny"), embeddings_dir=embeddings) as pipe:
        ours = pipe(prompt, negative_prompt=negative, seed=3, scheduler="euler", **KW)
    assert psnr(ours.images[0], expected) > 45
    without = _diffusers_image(reference_pipeline("tiny"), {}, prompt, negative)
    assert psnr(without, expected) < 35  # the embeddings change the image
    hashes = {e.name: e.short_hash for e in map(read_embedding, embeddings.glob("*.safetensors"))}
    # negatives first, as AUTOMATIC1111 conditions them
    assert f'TI hashes: "glowy: {hashes["glowy"]}, zebrastyle: {hashes["zebrastyle"]}"' in ours.parameters[0]


def test_sdxl_clip_l_and_clip_g_match_diffusers(export_dir, reference_pipeline, embeddings):
    vectors = read_embedding(embeddings / "xlstyle.safetensors").vectors
    prompt = "a xlstyle red circle"
    expected = _diffusers_image(reference_pipeline("tiny-sdxl"), {"xlstyle": [
        (torch.from_numpy(vectors["clip_l"]), "text_encoder", "tokenizer"),
        (torch.from_numpy(vectors["clip_g"]), "text_encoder_2", "tokenizer_2")]}, prompt)
    with Pipeline.load(export_dir("tiny-sdxl"), embeddings_dir=embeddings) as pipe:
        ours = pipe(prompt, seed=3, scheduler="euler", **KW)
    assert psnr(ours.images[0], expected) > 45
    assert "TI hashes" in ours.parameters[0]


@pytest.mark.parametrize("model, other_text", [("tiny-sd3", "prompt_3"), ("tiny-flux", "prompt_2")])
def test_sd3_and_flux_clip_encoders_read_embeddings(export_dir, reference_pipeline, tmp_path, model, other_text):
    """diffusers has no textual inversion for SD 3 or Flux: the check is exact instead. An embedding (SDXL's
    clip_l / clip_g pair; Flux: clip_l) holding the CLIP token embeddings of "circle" must give the image of the
    word itself, with T5 given the same text."""
    pipe = reference_pipeline(model)
    encoders = {"clip_l": (pipe.tokenizer, pipe.text_encoder)}
    if model == "tiny-sd3":  # Flux's second encoder is T5
        encoders["clip_g"] = (pipe.tokenizer_2, pipe.text_encoder_2)
    vectors = {key: encoder.get_input_embeddings().weight[tokenizer("circle", add_special_tokens=False).input_ids]
               .detach().contiguous() for key, (tokenizer, encoder) in encoders.items()}
    save_file(vectors, str(tmp_path / "roundthing.safetensors"))
    kw = {**KW, "height": 64, "width": 96, "seed": 4, "scheduler": "euler", other_text: "a red circle"}
    with Pipeline.load(export_dir(model), embeddings_dir=tmp_path) as ours:
        named, word = ours("a red roundthing", **kw), ours("a red circle", **kw)
        other = ours("a red square", **kw)
    assert np.array_equal(named.latents, word.latents) and "TI hashes: \"roundthing: " in named.parameters[0]
    assert np.abs(other.latents - word.latents).max() > 1e-2, "the word changed nothing"


def test_openvino_reads_the_vectors_as_onnx_runtime(export_dir, embeddings):
    latents = {}
    for backend in ("onnxruntime", "openvino"):
        with Pipeline.load(export_dir("tiny"), backend=backend, embeddings_dir=embeddings) as pipe:
            latents[backend] = pipe("(zebrastyle:1.2) cat", seed=4, num_inference_steps=2, height=64, width=64).latents
    np.testing.assert_allclose(latents["openvino"], latents["onnxruntime"], atol=2e-3)


@pytest.fixture(scope="module")
def tokenizer(export_dir):
    folder = export_dir("tiny")
    return ClipTokenizer(folder, load_manifest(folder).tokenizers["tokenizer"])


def _matcher(folder, tokenizer, **files):
    for name, tensor in files.items():
        save_file({"emb_params": tensor}, folder / f"{name}.safetensors")
    return EmbeddingLibrary(folder).matcher(tokenizer, "", 32)


def test_the_longest_name_wins_and_vectors_move_whole_to_the_next_chunk(tmp_path, tokenizer):
    (tmp_path / "sub").mkdir()
    matcher = _matcher(tmp_path, tokenizer, **{"zebra style": _vectors(2, 32, 1), "sub/zebra style plus":
                                              _vectors(10, 32, 2)})
    chunks = tokenize_prompt(tokenizer, "a zebra style plus cat, a zebra style", embeddings=matcher)
    short_ids, long_ids = (matcher.ids(e) for e in sorted(chunks.embeddings, key=lambda e: e.count))
    assert list(chunks.ids[0, 2:12]) == long_ids and list(chunks.ids[0, 15:17]) == short_ids
    cat = tokenizer.tokens("cat")
    chunks = tokenize_prompt(tokenizer, " ".join(["cat"] * 70) + " zebra style plus", embeddings=matcher)
    assert len(chunks) == 2 and list(chunks.ids[0, 1:72]) == cat * 70 + [tokenizer.spec.eos_token_id]
    assert list(chunks.ids[1, 1:11]) == long_ids
    weighted = tokenize_prompt(tokenizer, "(zebra style:1.3)", embeddings=matcher)
    np.testing.assert_allclose(weighted.weights[0, :4], [1, 1.3, 1.3, 1], rtol=1e-6)


def test_files_that_do_not_fit_are_skipped_with_the_reason(tmp_path, tokenizer, export_dir):
    save_file({"a": _vectors(1, 32, 1), "b": _vectors(1, 32, 2)}, tmp_path / "two.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 12)
    torch.save({"string_to_param": {"*": _vectors(2, 32, 3)}}, tmp_path / "old.pt")
    save_file({"emb_params": _vectors(1, 1024, 5)}, tmp_path / "wide.safetensors")
    library = EmbeddingLibrary(tmp_path)
    found, errors = library.scan()
    assert set(found) == {"wide"} and set(errors) == {"two", "broken", "old"}
    assert "holds 2 tensors" in errors["two"] and "pickle" in errors["old"]
    assert library.matcher(tokenizer, "", 32).rows == {}  # 1024 wide: SD 2.x's, not tiny's
    allowed = EmbeddingLibrary(tmp_path, allow_pickle=True)
    assert allowed.scan()[0]["old"].vectors[""].shape == (2, 32)
    with pytest.raises(UserInputError, match="embeddings folder"):
        EmbeddingLibrary(tmp_path / "missing")


def test_served_embeddings_through_webuiapi(export_dir, embeddings):
    """webuiapi lists what fits the served model and what does not; a request's prompt uses one by its name and
    gets the Python API's image."""
    webuiapi = pytest.importorskip("webuiapi")
    from test_serve import Server

    server = Server(export_dir("tiny"), "--embeddings-dir", str(embeddings))
    try:
        host, port = server.url.removeprefix("http://").split(":")
        api = webuiapi.WebUIApi(host=host, port=int(port), steps=3)
        listed = api.get_embeddings()
        answer = api.txt2img(prompt="a zebrastyle cat", seed=7, width=64, height=64, cfg_scale=6, sampler_name="Euler")
        assert api.session.post(f"{api.baseurl}/refresh-embeddings").status_code == 200
    finally:
        server.close()
    assert sorted(listed["loaded"]) == ["glowy", "zebrastyle"] and sorted(listed["skipped"]) == ["wide", "xlstyle"]
    assert listed["loaded"]["zebrastyle"] == {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                              "shape": 32, "vectors": 3}
    with Pipeline.load(export_dir("tiny"), embeddings_dir=embeddings) as pipe:
        want = pipe("a zebrastyle cat", seed=7, scheduler="euler", num_inference_steps=3, height=64, width=64,
                    guidance_scale=6)
    assert np.array_equal(np.asarray(answer.image.convert("RGB")), np.asarray(want.images[0]))
    assert "TI hashes" in answer.info["infotexts"][0]
