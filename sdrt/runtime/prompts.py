"""AUTOMATIC1111's prompt syntax: attention weights and prompts longer than one CLIP window.

``(word)`` weighs a span ×1.1, ``[word]`` ÷1.1, ``(word:1.3)`` ×1.3; brackets nest and multiply; ``\\(`` is a literal
bracket; ``BREAK`` starts a new chunk. Token ids go in chunks of 75 (each wrapped in BOS/EOS to CLIP's 77), encoded
separately and concatenated along the token axis; each token's hidden state is scaled by its weight and the chunk
rescaled to its original mean, as AUTOMATIC1111's "Original" emphasis does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..embeddings.files import Embedding
from ..embeddings.library import NO_MATCHES, Matcher
from .tokenizer import ClipTokenizer

ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1
COMMA_PADDING_BACKTRACK = 20  # a chunk that would split a phrase ends at a comma up to this many tokens back
MEAN_FLOOR = 1e-4  # a chunk mean below this share of the mean |value| is rounding noise: no rescaling by it

# AUTOMATIC1111's modules/prompt_parser.py, token for token.
_RE_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
BREAK = ("BREAK", -1.0)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into (text, weight) runs; BREAK becomes ``("BREAK", -1.0)``. Unbalanced brackets are closed
    at the end; runs of equal weight are merged. Examples (AUTOMATIC1111's)::

        'an (important) word'      -> [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
        '\\(literal\\]'              -> [('(literal]', 1.0)]
        'a (house:1.3) [on] a hill' -> [('a ', 1.0), ('house', 1.3), (' ', 1.0), ('on', 0.909...), (' a hill', 1.0)]
    """
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in _RE_ATTENTION.finditer(text):
        part, weight = m.group(0), m.group(1)
        if part.startswith("\\"):
            res.append([part[1:], 1.0])
        elif part == "(":
            round_brackets.append(len(res))
        elif part == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif part == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_BRACKET_MULTIPLIER)
        elif part == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_BRACKET_MULTIPLIER)
        else:
            for i, piece in enumerate(_RE_BREAK.split(part)):
                if i > 0:
                    res.append(list(BREAK))
                res.append([piece, 1.0])

    for pos in round_brackets:
        multiply_range(pos, ROUND_BRACKET_MULTIPLIER)
    for pos in square_brackets:
        multiply_range(pos, SQUARE_BRACKET_MULTIPLIER)
    if not res:
        res = [["", 1.0]]

    i = 0  # merge runs of identical weights
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(t, w) for t, w in res]


@dataclass(frozen=True)
class PromptChunks:
    """A prompt as ``[chunks, 77]`` token ids (BOS, 75 tokens, EOS, padding as the model's tokenizer pads) and the
    weight of each position (1 for BOS, EOS and padding)."""

    ids: np.ndarray  # int32 [C, 77]; −k−1: row k of the textual-inversion vectors (embeddings.library.Matcher)
    weights: np.ndarray  # float32 [C, 77]
    embeddings: tuple[Embedding, ...] = ()  # the textual-inversion embeddings the prompt uses

    def __len__(self) -> int:
        return len(self.ids)

    def padded(self, n: int, empty: PromptChunks) -> PromptChunks:
        """These chunks followed by copies of ``empty`` (the empty prompt's one chunk) up to ``n`` chunks."""
        extra = n - len(self)
        return PromptChunks(np.concatenate([self.ids] + [empty.ids] * extra),
                            np.concatenate([self.weights] + [empty.weights] * extra), self.embeddings)


def tokenize_prompt(tokenizer: ClipTokenizer, text: str, weighting: bool = True,
                    embeddings: Matcher = NO_MATCHES) -> PromptChunks:
    """Token ids and weights of ``text`` in chunks of 75 tokens, as AUTOMATIC1111's ``tokenize_line``: a chunk that
    fills up mid-phrase ends after the last comma within ``COMMA_PADDING_BACKTRACK`` tokens, and ``BREAK`` pads the
    current chunk out. ``weighting=False`` reads brackets as plain text (diffusers' behaviour). The name of a
    textual-inversion embedding in ``embeddings`` becomes its vectors, in the current chunk where they fit, else in
    the next."""
    window = tokenizer.max_tokens  # 75
    parsed = parse_prompt_attention(text) if weighting else [(text, 1.0)]
    comma = tokenizer.tokens(",")[0]
    chunks: list[tuple[list[int], list[float]]] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1
    used: dict[str, Embedding] = {}

    def next_chunk() -> None:
        nonlocal tokens, weights, last_comma
        chunks.append((tokens, weights))
        tokens, weights, last_comma = [], [], -1

    for piece, weight in parsed:
        if (piece, weight) == BREAK:
            next_chunk()
            continue
        piece_tokens, position = tokenizer.tokens(piece), 0
        while position < len(piece_tokens):
            token = piece_tokens[position]
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == window and last_comma != -1 and len(tokens) - last_comma <= COMMA_PADDING_BACKTRACK:
                # move the words after the last comma into the next chunk rather than split their phrase
                cut = last_comma + 1
                moved = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                next_chunk()
                tokens, weights = list(moved[0]), list(moved[1])
            if len(tokens) == window:
                next_chunk()
            found = embeddings.find(piece_tokens, position)
            if found is None:
                tokens.append(token)
                weights.append(weight)
                position += 1
                continue
            embedding, spanned = found
            if len(tokens) + embedding.count > window:
                next_chunk()
            tokens += embeddings.ids(embedding)
            weights += [weight] * embedding.count
            used[embedding.name] = embedding
            position += spanned
    if tokens or not chunks:
        next_chunk()

    spec, length = tokenizer.spec, tokenizer.spec.model_max_length
    ids = np.full((len(chunks), length), spec.pad_token_id, dtype=np.int32)
    w = np.ones((len(chunks), length), dtype=np.float32)
    for i, (toks, ws) in enumerate(chunks):
        row = [spec.bos_token_id, *toks, spec.eos_token_id]
        ids[i, : len(row)] = row
        w[i, 1 : 1 + len(ws)] = ws
    return PromptChunks(ids, w, tuple(used.values()))


def apply_weights(hidden: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Scale each token's hidden state ``[C, 77, D]`` by its weight ``[C, 77]``, then each chunk back to its original
    mean (AUTOMATIC1111's "Original" emphasis, per prompt and chunk). Where either mean is next to nothing beside the
    values themselves (a final layer norm with no bias, as in random-weight models), the ratio of means is rounding
    noise, so the chunk keeps the plain weighted values (AUTOMATIC1111 would give NaN or an arbitrary scale there)."""
    if np.all(weights == 1.0):
        return hidden
    original_mean = hidden.mean(axis=(1, 2), keepdims=True)
    weighted = hidden * weights[:, :, None]
    new_mean = weighted.mean(axis=(1, 2), keepdims=True)
    size = np.abs(hidden).mean(axis=(1, 2), keepdims=True)
    meaningful = (np.abs(original_mean) > MEAN_FLOOR * size) & (np.abs(new_mean) > MEAN_FLOOR * size)
    return weighted * np.where(meaningful, original_mean / np.where(meaningful, new_mean, 1), 1).astype(np.float32)
