"""The denoiser's conditioning: what a family's text encoders make of the prompts, as the bundle of U-Net inputs
the loop passes on unchanged (k-diffusion's ``extra_args``): named arrays batched as the U-Net's sample is, the
negatives' half first when classifier-free guidance runs. A family adds its own conditioner here (SDXL's pooled
embeddings and time ids are more entries of the same bundle); the loop never asks which family it runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..components import T5_ENCODER, TEXT_ENCODER, TEXT_ENCODER_2, UNET, WINDOW, TextEncoder
from ..embeddings.files import ANY_ENCODER, Embedding
from ..embeddings.library import NO_MATCHES, EmbeddingLibrary
from ..errors import ManifestError
from ..lora.tags import remove_tags
from ..manifest import Manifest
from .backends import Backend
from .prompts import PromptChunks, apply_weights, parse_prompt_attention, tokenize_prompt
from .request import Job, takes_clip_skip
from .tokenizer import ClipTokenizer, T5Tokenizer

Conditioning = dict[str, np.ndarray]  # U-Net input name -> array with the U-Net's batch


@dataclass(frozen=True)
class Tokens:
    """Every prompt of a call tokenized, in the order the text encoder sees them."""
    prompts: list[PromptChunks]
    chunks: int  # 75-token chunks per prompt (shorter prompts padded to it)
    vectors: list[np.ndarray | None]  # per encoder: the textual-inversion vectors its negative ids read (None: no input)

    @property
    def embeddings(self) -> list[Embedding]:
        """The textual-inversion embeddings the prompts use, each once."""
        return list({e.name: e for p in self.prompts for e in p.embeddings}.values())


class TextEncoders:
    """A family's text encoders as the conditioners use them: each one's tokenizer and its textual-inversion
    embeddings (``key``: which vectors of an SDXL embedding it takes, "" for a family with one encoder)."""

    def __init__(self, folder, manifest: Manifest, embeddings: EmbeddingLibrary | None,
                 encoders: list[tuple[TextEncoder, str, str]]):
        self.embeddings = embeddings or EmbeddingLibrary()
        self.encoders = [(c, ClipTokenizer(folder, manifest.tokenizers[t]), key) for c, t, key in encoders
                         if c.name in manifest.components]
        # the width of each encoder's textual-inversion vectors; None where its graph takes none (an older export)
        self.widths = [_vector_width(manifest, c) for c, _, _ in self.encoders]

    def tokenize(self, texts: list[list[str]], weighting: bool) -> Tokens:
        """The i-th encoder's texts ``texts[i]`` in 75-token chunks, every prompt padded to the longest with the empty
        prompt's chunks (as AUTOMATIC1111), listed encoder by encoder."""
        per_encoder, tables = [], []
        for (_, tokenizer, key), width, encoder_texts in zip(self.encoders, self.widths, texts):
            matcher = self.embeddings.matcher(tokenizer, key, width) if width else NO_MATCHES
            per_encoder.append([tokenize_prompt(tokenizer, t, weighting, matcher) for t in encoder_texts])
            tables.append(matcher.table if width else None)
        n = max(len(p) for prompts in per_encoder for p in prompts)
        if n > 1:
            empties = [tokenize_prompt(tokenizer, "", weighting) for _, tokenizer, _ in self.encoders]
            per_encoder = [[p.padded(n, empty) for p in prompts] for prompts, empty in zip(per_encoder, empties)]
        return Tokens([p for prompts in per_encoder for p in prompts], n, tables)

    def fits(self, embedding: Embedding) -> bool:
        """Whether ``embedding`` has vectors of the right width for every text encoder (none fits an export made
        before textual inversion)."""
        keyed = [(key, width) for (_, _, key), width in zip(self.encoders, self.widths) if width]
        return bool(keyed) and all(embedding.vectors_for(key, width) is not None for key, width in keyed)


class ClipConditioner:
    """SD 1.x and 2.x: one CLIP text encoder. AUTOMATIC1111's weighting and 75-token chunks (every prompt padded with
    the empty prompt's chunks to the longest), CLIP skip; ``encoder_hidden_states`` [U-Net batch, 77·chunks, D],
    negatives first ([uncond..., cond...]) and each prompt's images side by side, as diffusers."""

    def __init__(self, folder, manifest: Manifest, backend: Backend, embeddings: EmbeddingLibrary | None = None):
        self.manifest, self.backend = manifest, backend
        self.text = TextEncoders(folder, manifest, embeddings, [(TEXT_ENCODER, "tokenizer", ANY_ENCODER)])
        self.takes_clip_skip = takes_clip_skip(manifest)

    def tokenize(self, job: Job) -> Tokens:
        return self.text.tokenize([_texts(job.negatives, job.prompts, job)], job.weighting)

    def encode(self, tokens: Tokens, job: Job) -> Conditioning:
        clip_skip = job.clip_skip if self.takes_clip_skip else None
        hidden, _ = _encode(self.backend, TEXT_ENCODER.name, tokens.prompts, tokens.chunks, clip_skip, tokens.vectors[0])
        return {"encoder_hidden_states": np.repeat(hidden, job.num_images, axis=0)}


class SdxlConditioner:
    """SDXL: two CLIP text encoders (the refiner: the second alone), each with AUTOMATIC1111's weighting and chunks,
    their penultimate hidden states concatenated (``encoder_hidden_states``); the second one's pooled embedding of
    each prompt's first chunk (``text_embeds``, as A1111; diffusers' with one chunk); the micro-conditioning
    ``time_ids``: original size, the crop's top-left corner, and the target size (the base) or the aesthetic score
    (the refiner), with diffusers' defaults (the image's size, no crop, 6.0 and 2.5 for the negatives). An empty
    negative prompt conditions with zeros where the model says so (``force_zeros_for_empty_prompt``, as diffusers
    and A1111). Textual-inversion embeddings give each encoder its own vectors (``clip_l``, ``clip_g``)."""

    ENCODERS = [(TEXT_ENCODER, "tokenizer", "clip_l"), (TEXT_ENCODER_2, "tokenizer_2", "clip_g")]

    def __init__(self, folder, manifest: Manifest, backend: Backend, embeddings: EmbeddingLibrary | None = None):
        self.manifest, self.backend = manifest, backend
        self.text = TextEncoders(folder, manifest, embeddings, self.ENCODERS)
        self.time_ids = manifest.components[UNET.name].input("time_ids").shape[1]  # 6, or the refiner's 5

    def tokenize(self, job: Job) -> Tokens:
        # the i-th encoder present gets the i-th prompts (as diffusers: a refiner's one encoder gets ``prompt``)
        texts = [_texts(job.negatives, job.prompts, job), _texts(job.negatives_2, job.prompts_2, job)]
        return self.text.tokenize(texts[:len(self.text.encoders)], job.weighting)

    def encode(self, tokens: Tokens, job: Job) -> Conditioning:
        encoders = self.text.encoders
        count = len(tokens.prompts) // len(encoders)
        hidden, pooled = [], None
        for k, (component, _, _) in enumerate(encoders):
            prompts = tokens.prompts[k * count:(k + 1) * count]
            h, out = _encode(self.backend, component.name, prompts, tokens.chunks, job.clip_skip, tokens.vectors[k])
            hidden.append(h)
            if "pooled" in out:
                pooled = _first_chunk_pooled(out, count, tokens.chunks)
        hidden = np.concatenate(hidden, axis=-1)
        negatives = len(job.negatives) if job.do_cfg else 0
        if negatives and self.manifest.zero_empty_negative:
            empty = np.array([not text for text in job.negatives] + [False] * len(job.prompts))  # as diffusers
            hidden[empty], pooled[empty] = 0.0, 0.0
        time_ids = np.stack([self._time_ids(job, negative=i < negatives) for i in range(count)])
        return {name: np.repeat(value, job.num_images, axis=0)
                for name, value in (("encoder_hidden_states", hidden), ("text_embeds", pooled), ("time_ids", time_ids))}

    def _time_ids(self, job: Job, negative: bool) -> np.ndarray:
        size = (job.height, job.width)
        if self.time_ids == 5:
            return np.array([*size, 0, 0, job.negative_aesthetic_score if negative else job.aesthetic_score],
                            dtype=np.float32)
        return np.array([*size, 0, 0, *size], dtype=np.float32)


class Sd3Conditioner:
    """SD 3 / 3.5, as diffusers' StableDiffusion3Pipeline: CLIP-L's and CLIP-G's penultimate hidden states side by
    side (each prompt's first 77 tokens, AUTOMATIC1111's weighting inside them), zero-padded to T5's width, then T5's
    hidden states of the prompt (the family's ``t5_tokens``; zeros where the export has no T5, as diffusers without
    ``text_encoder_3``), all along the token axis as ``encoder_hidden_states``; both CLIPs' pooled embeddings side
    by side as ``pooled_projections``. T5 reads the prompt's text without the weighting syntax."""

    ENCODERS = SdxlConditioner.ENCODERS

    def __init__(self, folder, manifest: Manifest, backend: Backend, embeddings: EmbeddingLibrary | None = None):
        self.manifest, self.backend = manifest, backend
        self.text = TextEncoders(folder, manifest, embeddings, self.ENCODERS)
        self.t5 = T5Tokenizer(folder, manifest.tokenizers["tokenizer_3"]) if T5_ENCODER.name in manifest.components \
            else None
        context = manifest.components[UNET.name].input("encoder_hidden_states").shape
        self.t5_shape = (context[1] - WINDOW, context[2])  # T5's tokens and width

    def tokenize(self, job: Job) -> Tokens:
        texts = [_texts(job.negatives, job.prompts, job), _texts(job.negatives_2, job.prompts_2, job)]
        return self.text.tokenize(texts, job.weighting)

    def encode(self, tokens: Tokens, job: Job) -> Conditioning:
        count = len(tokens.prompts) // 2
        hidden, pooled = [], []
        for k, (component, _, _) in enumerate(self.text.encoders):
            prompts = tokens.prompts[k * count:(k + 1) * count]
            h, out = _encode(self.backend, component.name, prompts, tokens.chunks, job.clip_skip, tokens.vectors[k])
            hidden.append(h[:, :WINDOW])  # the first chunk: diffusers truncates the prompt to CLIP's window
            pooled.append(_first_chunk_pooled(out, count, tokens.chunks))
        clip = np.concatenate(hidden, axis=-1)
        clip = np.pad(clip, ((0, 0), (0, 0), (0, self.t5_shape[1] - clip.shape[-1])))
        context = np.concatenate([clip, self._t5(job, count)], axis=1)
        pooled = np.concatenate(pooled, axis=-1)
        return {"encoder_hidden_states": np.repeat(context, job.num_images, axis=0),
                "pooled_projections": np.repeat(pooled, job.num_images, axis=0)}

    def _t5(self, job: Job, count: int) -> np.ndarray:
        if self.t5 is None:
            return np.zeros((count, *self.t5_shape), np.float32)
        return _run_t5(self.backend, self.t5, t5_texts(job, job.negatives_3, job.prompts_3))


class FluxConditioner:
    """Flux.1, as diffusers' FluxPipeline: T5's hidden states of ``prompt_2`` (the prompt by default) as
    ``encoder_hidden_states``, CLIP-L's pooled output of the prompt's first 77 tokens as ``pooled_projections``, and
    dev's ``guidance`` input (the distilled guidance scale, one per image). Negatives go first only where true CFG
    runs."""

    def __init__(self, folder, manifest: Manifest, backend: Backend, embeddings: EmbeddingLibrary | None = None):
        self.manifest, self.backend = manifest, backend
        self.text = TextEncoders(folder, manifest, embeddings, [(TEXT_ENCODER, "tokenizer", "clip_l")])
        self.t5 = T5Tokenizer(folder, manifest.tokenizers["tokenizer_2"])

    def tokenize(self, job: Job) -> Tokens:
        return self.text.tokenize([_texts(job.negatives, job.prompts, job)], job.weighting)

    def encode(self, tokens: Tokens, job: Job) -> Conditioning:
        _, out = _encode(self.backend, TEXT_ENCODER.name, tokens.prompts, tokens.chunks, job.clip_skip,
                         tokens.vectors[0])
        count = len(tokens.prompts)
        pooled = _first_chunk_pooled(out, count, tokens.chunks)
        t5 = _run_t5(self.backend, self.t5, t5_texts(job, job.negatives_2, job.prompts_2))  # prompt_2, as diffusers
        bundle = {"encoder_hidden_states": t5, "pooled_projections": pooled}
        if job.distilled_guidance is not None:
            bundle["guidance"] = np.full(count, job.distilled_guidance, np.float32)
        return {name: np.repeat(value, job.num_images, axis=0) for name, value in bundle.items()}


def t5_texts(job: Job, negatives: list[str], prompts: list[str]) -> list[str]:
    """What T5 reads of a call's prompts (SD 3's ``prompt_3``, Flux's ``prompt_2``): as the CLIP encoders, without
    AUTOMATIC1111's weighting syntax (kept as text with ``weighting=False``)."""
    texts = _texts(negatives, prompts, job)
    if job.weighting:
        texts = ["".join(part for part, _ in parse_prompt_attention(t) if part != "BREAK") for t in texts]
    return texts


def _run_t5(backend: Backend, tokenizer: T5Tokenizer, texts: list[str]) -> np.ndarray:
    out = backend.run(T5_ENCODER.name, {"input_ids": tokenizer(texts)})
    return out["last_hidden_state"].astype(np.float32)


def _texts(negatives: list[str], prompts: list[str], job: Job) -> list[str]:
    """What one text encoder sees of a call: negatives first when guidance runs, LoRA tags taken out."""
    return [remove_tags(text) for text in (negatives + prompts if job.do_cfg else prompts)]


def _encode(backend: Backend, component: str, prompts: list[PromptChunks], chunks: int, clip_skip: int | None,
            vectors: np.ndarray | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One text encoder's hidden states [prompts, 77·chunks, D], every chunk run at once and weighted as
    AUTOMATIC1111 weighs it, and the encoder's outputs as they came (a pooled one among them)."""
    ids = np.concatenate([p.ids for p in prompts])
    inputs = {"input_ids": ids}
    if clip_skip is not None:  # exports from before CLIP skip take the ids alone
        inputs["clip_skip"] = np.array([clip_skip], dtype=np.int32)
    if vectors is not None:  # exports from before textual inversion take no vectors
        inputs["input_ids"], inputs["embedding_vectors"] = _used_vectors(ids, vectors)
    out = backend.run(component, inputs)
    hidden = out["last_hidden_state"].astype(np.float32).reshape(len(prompts), chunks, *out["last_hidden_state"].shape[1:])
    hidden = np.stack([apply_weights(h, p.weights) for h, p in zip(hidden, prompts)])
    return hidden.reshape(len(prompts), chunks * hidden.shape[2], hidden.shape[3]), out


def _first_chunk_pooled(out: dict[str, np.ndarray], prompts: int, chunks: int) -> np.ndarray:
    """A text encoder's pooled embedding of each prompt's first chunk (as A1111; diffusers' with one chunk)."""
    return out["pooled"].astype(np.float32).reshape(prompts, chunks, -1)[:, 0]


def _used_vectors(ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ids renumbered to read only the vectors they use, and those vectors (one zero row when none is used:
    the graph's input is never empty)."""
    negative = ids < 0
    used = np.unique(-ids[negative] - 1)
    if not len(used):
        return ids, np.zeros((1, vectors.shape[1]), np.float32)
    renumbered = ids.copy()
    renumbered[negative] = -np.searchsorted(used, -ids[negative] - 1) - 1
    return renumbered, vectors[used]


def _vector_width(manifest: Manifest, component: TextEncoder) -> int | None:
    spec = manifest.components.get(component.name)
    names = {t.name: t for t in spec.inputs} if spec else {}
    return names["embedding_vectors"].shape[1] if "embedding_vectors" in names else None


CONDITIONERS = {"sd1": ClipConditioner, "sd2": ClipConditioner, "sdxl": SdxlConditioner, "sdxl-refiner": SdxlConditioner,
                "sd3": Sd3Conditioner, "flux": FluxConditioner}


def conditioner_for(folder, manifest: Manifest, backend: Backend, embeddings: EmbeddingLibrary | None = None):
    try:
        return CONDITIONERS[manifest.family](folder, manifest, backend, embeddings)
    except KeyError:
        raise ManifestError(f"{folder} holds a {manifest.family!r} model, which this sdrt cannot run yet "
                            f"(it runs {', '.join(CONDITIONERS)})") from None
