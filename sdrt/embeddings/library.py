"""The textual-inversion embeddings a pipeline can use: every embedding file in its embeddings folder (subfolders
included, as AUTOMATIC1111's ``embeddings``), re-read when it changes, and found in a prompt as AUTOMATIC1111 finds
them: by the token ids of the file's name, wherever that run of tokens appears."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from .files import SUFFIXES, Embedding, read_embedding

log = logging.getLogger("sdrt")


@dataclass(frozen=True)
class Matcher:
    """The embeddings that fit one text encoder, for its tokenizer: each one's name as token ids, and its vectors
    as rows of ``table``; a prompt's token stands for row k as id −k−1 (the graph's ``embedding_vectors``)."""

    table: np.ndarray  # float32 [rows, D]
    rows: dict[str, int] = field(default_factory=dict)  # name -> its first row
    by_first_token: dict[int, list[tuple[tuple[int, ...], Embedding]]] = field(default_factory=dict)

    def find(self, tokens: list[int], position: int) -> tuple[Embedding, int] | None:
        """The embedding whose name's tokens start at ``position`` (the longest), and how many tokens it spans."""
        for ids, embedding in self.by_first_token.get(tokens[position], ()):
            if tuple(tokens[position:position + len(ids)]) == ids:
                return embedding, len(ids)
        return None

    def ids(self, embedding: Embedding) -> list[int]:
        first = self.rows[embedding.name]
        return [-(first + k) - 1 for k in range(embedding.count)]


NO_MATCHES = Matcher(np.zeros((0, 0), np.float32))


class EmbeddingLibrary:
    def __init__(self, folder: str | Path | None = None, allow_pickle: bool = False):
        self.folder = Path(folder) if folder else None
        if self.folder is not None and not self.folder.is_dir():
            raise UserInputError(f"the embeddings folder {self.folder} does not exist")
        self.allow_pickle = allow_pickle
        self._read: dict[Path, tuple[tuple[int, int], Embedding | str]] = {}  # file -> (stamp, embedding or error)
        self._matchers: dict[tuple, tuple[tuple, Matcher]] = {}  # encoder -> (what it was made of, matcher)

    def scan(self) -> tuple[dict[str, Embedding], dict[str, str]]:
        """The folder's embeddings by name, and the files that could not be read (name -> why); files are read
        again when their size or modification time changed."""
        if self.folder is None:
            return {}, {}
        files = sorted(p for p in self.folder.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        read = {}
        for path in files:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if path not in self._read or self._read[path][0] != stamp:
                self._read[path] = (stamp, self._try_read(path))
            read[path] = self._read[path]
        self._read = read
        embeddings = {e.name: e for _, e in read.values() if isinstance(e, Embedding)}
        errors = {p.stem: e for p, (_, e) in read.items() if isinstance(e, str)}
        return embeddings, errors

    def _try_read(self, path: Path) -> Embedding | str:
        try:
            return read_embedding(path, self.allow_pickle)
        except UserInputError as e:  # one bad file does not stop the others (as AUTOMATIC1111)
            log.warning("embedding %s skipped: %s", path, e)
            return str(e)

    def matcher(self, tokenizer, encoder_key: str, width: int) -> Matcher:
        """The embeddings that fit a text encoder (``encoder_key``: "clip_l", "clip_g" or "" for a family with
        one encoder; ``width``: its token embeddings' size), matched with its ``tokenizer``."""
        embeddings, _ = self.scan()
        fitting = {name: (e, v) for name, e in embeddings.items()
                   if (v := e.vectors_for(encoder_key, width)) is not None}
        encoder, made_of = (id(tokenizer), encoder_key, width), tuple((n, e.short_hash) for n, (e, _) in fitting.items())
        if self._matchers.get(encoder, (None,))[0] != made_of:
            self._matchers[encoder] = made_of, _make_matcher(tokenizer, fitting, width)
        return self._matchers[encoder][1]


def _make_matcher(tokenizer, fitting: dict[str, tuple[Embedding, np.ndarray]], width: int) -> Matcher:
    rows, by_first, start = {}, {}, 0
    for name, (embedding, vectors) in fitting.items():
        ids = tuple(tokenizer.tokens(name))
        if not ids:
            continue
        rows[name], start = start, start + len(vectors)
        by_first.setdefault(ids[0], []).append((ids, embedding))
    for candidates in by_first.values():
        candidates.sort(key=lambda c: len(c[0]), reverse=True)  # the longest name that matches wins
    table = np.concatenate([v for e, v in fitting.values() if e.name in rows]) if rows else np.zeros((0, width))
    return Matcher(table.astype(np.float32), rows, by_first)
