"""CLIP's and T5's tokenization with the ``tokenizers`` library; ids equal transformers' CLIPTokenizer and
T5TokenizerFast."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import ManifestError
from ..manifest import TokenizerSpec

log = logging.getLogger("sdrt")


def _load(folder: Path, spec: TokenizerSpec):
    from tokenizers import Tokenizer

    path = folder / spec.dir / "tokenizer.json"
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for missing or corrupt files
        raise ManifestError(f"cannot read the tokenizer {path} ({e}). Export the model again.") from e


class ClipTokenizer:
    def __init__(self, folder: Path, spec: TokenizerSpec):
        self._tok, self.spec = _load(folder, spec), spec
        self.max_tokens = spec.model_max_length - 2  # room for BOS and EOS

    def tokens(self, prompt: str) -> list[int]:
        """The prompt's token ids, without BOS/EOS."""
        return self._tok.encode(prompt, add_special_tokens=False).ids

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """``[len(prompts), 77]`` int32 ids: BOS, up to 75 tokens, EOS, padding (as transformers pads)."""
        s = self.spec
        rows = []
        for prompt in prompts:
            ids = self.tokens(prompt)
            if len(ids) > self.max_tokens:
                dropped = self._tok.decode(ids[self.max_tokens :])
                log.warning("prompt is longer than %d tokens; this part was dropped: %r", self.max_tokens, dropped)
                ids = ids[: self.max_tokens]
            ids = [s.bos_token_id, *ids, s.eos_token_id]
            rows.append(ids + [s.pad_token_id] * (s.model_max_length - len(ids)))
        return np.asarray(rows, dtype=np.int32)


class T5Tokenizer:
    """T5's SentencePiece tokenization with the ``tokenizers`` library, as transformers' T5TokenizerFast pads and
    truncates for diffusers: the prompt's pieces cut to L − 1, EOS, padding to L (the export's fixed length)."""

    def __init__(self, folder: Path, spec: TokenizerSpec):
        self._tok, self.spec = _load(folder, spec), spec

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """``[len(prompts), L]`` int32 ids."""
        s, rows = self.spec, []
        for prompt in prompts:
            ids = self._tok.encode(prompt, add_special_tokens=False).ids
            if len(ids) > s.model_max_length - 1:
                log.warning("prompt is longer than T5's %d tokens; this part was dropped: %r", s.model_max_length - 1,
                            self._tok.decode(ids[s.model_max_length - 1:]))
                ids = ids[: s.model_max_length - 1]
            ids = [*ids, s.eos_token_id]
            rows.append(ids + [s.pad_token_id] * (s.model_max_length - len(ids)))
        return np.asarray(rows, dtype=np.int32)
