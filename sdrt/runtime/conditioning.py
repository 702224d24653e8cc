"""The denoiser's conditioning: what a family's text encoders make of the prompts, as the bundle of U-Net inputs
the loop passes on unchanged (k-diffusion's ``extra_args``): named arrays batched as the U-Net's sample is, the
negatives' half first when classifier-free guidance runs. A family adds its own conditioner here (SDXL's pooled
embeddings and time ids are more entries of the same bundle); the loop never asks which family it runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..components import TEXT_ENCODER
from ..errors import ManifestError
from ..manifest import Manifest
from .backends import Backend
from .prompts import PromptChunks, apply_weights, tokenize_prompt
from .request import Job, takes_clip_skip
from .tokenizer import ClipTokenizer

Conditioning = dict[str, np.ndarray]  # U-Net input name -> array with the U-Net's batch


@dataclass(frozen=True)
class Tokens:
    """Every prompt of a call tokenized, in the order the text encoder sees them."""
    prompts: list[PromptChunks]
    chunks: int  # 75-token chunks per prompt (shorter prompts padded to it)


class ClipConditioner:
    """SD 1.x and 2.x: one CLIP text encoder. AUTOMATIC1111's weighting and 75-token chunks (every prompt padded with
    the empty prompt's chunks to the longest), CLIP skip; ``encoder_hidden_states`` [U-Net batch, 77·chunks, D],
    negatives first ([uncond..., cond...]) and each prompt's images side by side, as diffusers."""

    def __init__(self, folder, manifest: Manifest, backend: Backend):
        self.manifest, self.backend = manifest, backend
        self.tokenizer = ClipTokenizer(folder, manifest.tokenizers["tokenizer"])
        self.takes_clip_skip = takes_clip_skip(manifest)

    def tokenize(self, job: Job) -> Tokens:
        texts = (job.negatives + job.prompts) if job.do_cfg else job.prompts
        prompts = [tokenize_prompt(self.tokenizer, text, job.weighting) for text in texts]
        n = max(len(p) for p in prompts)
        if n > 1:
            empty = tokenize_prompt(self.tokenizer, "", job.weighting)
            prompts = [p.padded(n, empty) for p in prompts]
        return Tokens(prompts, n)

    def encode(self, tokens: Tokens, job: Job) -> Conditioning:
        inputs = {"input_ids": np.concatenate([p.ids for p in tokens.prompts])}
        if self.takes_clip_skip:
            inputs["clip_skip"] = np.array([job.clip_skip], dtype=np.int32)
        hidden = self.backend.run(TEXT_ENCODER.name, inputs)["last_hidden_state"].astype(np.float32)
        count, n = len(tokens.prompts), tokens.chunks
        hidden = hidden.reshape(count, n, *hidden.shape[1:])
        hidden = np.stack([apply_weights(h, p.weights) for h, p in zip(hidden, tokens.prompts)])
        hidden = hidden.reshape(count, n * hidden.shape[2], hidden.shape[3])
        return {"encoder_hidden_states": np.repeat(hidden, job.num_images, axis=0)}


CONDITIONERS = {"sd1": ClipConditioner, "sd2": ClipConditioner}


def conditioner_for(folder, manifest: Manifest, backend: Backend):
    try:
        return CONDITIONERS[manifest.family](folder, manifest, backend)
    except KeyError:
        raise ManifestError(f"{folder} holds a {manifest.family!r} model, which this sdrt cannot run yet "
                            f"(it runs {', '.join(CONDITIONERS)})") from None
