"""Built-in FAQ bot: BM25 retrieval over a question/answer file, Chinese segmented with jieba.

Retrieval is ``bm25s`` (Lucene BM25, k1=1.5, b=0.75). Every phrasing of a
question (and the entry's keywords) is one document.

Confidence is the share of the question's information that a phrasing covers:
the summed IDF of the question's terms found in the phrasing (or its entry's
keywords), over the summed IDF of all its terms (a term the FAQ never uses
counts with the highest IDF; tokens with digits, like order numbers, are left out). A question that repeats an FAQ question scores
1.0; one about something else scores near 0. Among the phrasings BM25 finds,
the one with the highest confidence picks the entry, BM25 breaking ties. The
bridge compares the confidence with ``confidence_threshold``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import BotContext, BotResult, is_cjk

DEFAULT_PATH = Path(__file__).with_name("data") / "faq.yaml"

STOP_EN = frozenset(
    "a an the is are was were be been am do does did i me my mine you your yours we our us it its to of for in on at "
    "by with and or but this that these those there here have has had will would can could should shall may might "
    "how what when where which who whom why please any some just so if than then about from into as not no yes "
    "get got want need know tell".split()
)
STOP_ZH = frozenset(
    "的 了 吗 呢 吧 啊 呀 哦 嗯 么 我 你 您 他 她 它 我们 你们 他们 是 在 有 和 与 就 都 还 也 又 要 会 能 可以 可 "
    "怎么 怎么办 怎样 如何 什么 多少 哪 哪里 哪些 为什么 请问 请 一下 这个 那个 这 那 个 吗".split()
)
_TOKEN_OK = re.compile(r"[0-9a-z\u3400-\u9fff]")


def _stem(word: str) -> str:
    """A very light English stemmer: plurals, -ing/-ed, a doubled last consonant, a final e."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    if len(word) > 5 and word.endswith("ing"):
        word = word[:-3]
    elif len(word) > 4 and word.endswith("ed"):
        word = word[:-2]
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]  # shipp(ing) -> ship
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]  # arrive / arrived -> arriv
    return word


_jieba: Any = None


def _seg(text: str) -> list[str]:
    global _jieba
    if _jieba is None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        _jieba = jieba
    return _jieba.lcut_for_search(text)


def tokenize(text: str) -> list[str]:
    """NFKC, case-folded, jieba-segmented (search mode), stop words dropped, English lightly stemmed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    out = []
    for tok in _seg(text):
        tok = tok.strip()
        if not tok or not _TOKEN_OK.search(tok):
            continue
        if tok.isascii():
            if tok in STOP_EN or (len(tok) == 1 and not tok.isdigit()):
                continue
            tok = _stem(tok)
        elif tok in STOP_ZH:
            continue
        out.append(tok)
    return out


@dataclass
class FaqEntry:
    id: str
    questions: dict[str, list[str]]  # lang -> phrasings ("" = any language)
    answers: dict[str, str]  # lang -> answer
    keywords: dict[str, list[str]]

    def answer_for(self, zh: bool) -> str:
        lang = "zh" if zh else "en"
        return self.answers.get(lang) or self.answers.get("") or self.answers.get("en") or next(iter(self.answers.values()))


@dataclass
class FaqHit:
    entry_id: str
    answer: str
    confidence: float
    score: float  # raw BM25


def _by_lang(value: Any, where: str) -> dict[str, list[str]]:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"": [value]}
    if isinstance(value, list):
        return {"": [str(v) for v in value]}
    if isinstance(value, dict):
        return {str(k): [v] if isinstance(v, str) else [str(x) for x in v] for k, v in value.items()}
    raise ValueError(f"{where}: expected a string, a list or a table of language -> strings")


def load_entries(path: str | Path) -> list[FaqEntry]:
    """Read a FAQ file (.yaml/.yml or .json): ``{entries: [{id, q, a, keywords?}]}`` or a bare list."""
    path = Path(path)
    raw_text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(raw_text)
    else:
        raw = json.loads(raw_text)
    items = raw.get("entries") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of entries (or a table with 'entries')")
    entries = []
    for i, item in enumerate(items):
        where = f"{path}: entry {i}"
        if not isinstance(item, dict) or "q" not in item or "a" not in item:
            raise ValueError(f"{where}: needs q and a")
        answers = item["a"]
        if isinstance(answers, str):
            answers = {"": answers}
        elif not isinstance(answers, dict):
            raise ValueError(f"{where}: a must be a string or a table of language -> string")
        entries.append(
            FaqEntry(
                id=str(item.get("id", i)),
                questions=_by_lang(item["q"], f"{where}.q"),
                answers={str(k): str(v) for k, v in answers.items()},
                keywords=_by_lang(item.get("keywords"), f"{where}.keywords"),
            )
        )
    return entries


@dataclass(frozen=True)
class Fusion:
    """How BM25 and the sentence embedding are combined (docs/bots.md, "FAQ retrieval").

    Per entry: `lexical`, the BM25 confidence of its best phrasing (0..1, above); `semantic`, the
    best cosine of the question with its phrasings; `answer`, the cosine with its answer (E5's
    question-to-passage match). The entry with the highest
    `lexical_weight * lexical + (1 - lexical_weight) * (rescaled semantic + answer_weight * rescaled answer)`
    is the candidate (e5's cosines sit between about 0.75 and 1 for any two texts: rescaled from
    `*_low` over `*_span`). Its confidence is a logistic regression (`coef`, on the features of
    `Candidate.features`) of it being the right answer, so the bridge's threshold reads as a probability.

    Every figure was set on the tune split of bench/faq_eval.yaml, never the held-out one: the
    weights by the most right answers (ties: the middle of the tied range), the coefficients by
    fitting (L2, lambda 1) whether the candidate was right. `python -m bench.faq_eval` reports both splits.
    """

    lexical_weight: float = 0.5
    answer_weight: float = 0.3
    cos_low: float = 0.85
    cos_span: float = 0.15
    answer_low: float = 0.8
    answer_span: float = 0.15
    # intercept, semantic, semantic lead over the next entry, lexical, lexical agrees, answer, fused lead,
    # Chinese (e5's cosines run higher between Chinese texts, and jieba's terms differ from English stems)
    coef: tuple[float, ...] = (-32.522, 14.4611, 17.9823, 2.4627, -0.4965, 20.2102, 3.9695, -0.9109)


@dataclass
class Candidate:
    """One entry's standing for a question (what `explain` returns, best first)."""

    entry: int
    lexical: float
    semantic: float  # best cosine with a phrasing (0 without an embedder)
    answer: float  # cosine with the answer (0 without an embedder)
    fused: float
    bm25: float
    confidence: float = 0.0


class FaqIndex:
    """The retrieval part, usable on its own: ``lookup(question) -> FaqHit | None``.

    With an `embedder` (faq_embed.py) retrieval is hybrid (Fusion); without one, BM25 alone.
    """

    def __init__(self, entries: list[FaqEntry], *, min_score: float = 0.0, embedder: Any = None,
                 fusion: Fusion | None = None) -> None:
        self.entries = entries
        self.min_score = min_score
        self.fusion = fusion or Fusion()
        self.doc_entry: list[int] = []
        self.doc_text: list[str] = []
        self.doc_terms: list[set[str]] = []  # a phrasing's terms plus its entry's keywords
        corpus: list[list[str]] = []
        for ei, entry in enumerate(entries):
            keywords = {t for k in entry.keywords.values() for t in tokenize(" ".join(k))}
            texts = [q for qs in entry.questions.values() for q in qs] + [" ".join(k) for k in entry.keywords.values()]
            for text in texts:
                toks = tokenize(text)
                if toks:
                    corpus.append(toks)
                    self.doc_entry.append(ei)
                    self.doc_text.append(text)
                    self.doc_terms.append(set(toks) | keywords)
        n = len(corpus)
        df: dict[str, int] = {}
        for doc in corpus:
            for t in set(doc):
                df[t] = df.get(t, 0) + 1
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        self.unknown_idf = math.log(1 + (n + 0.5) / 0.5)
        import bm25s  # numpy and friends: imported only where a FAQ bot is built (the bot worker)

        self._bm25 = bm25s.BM25()
        self._bm25.index(corpus, show_progress=False)
        self.embedder = embedder
        if embedder is not None:
            import numpy as np

            from .faq_embed import embed_cached

            phrasings = [(ei, q) for ei, entry in enumerate(entries) for qs in entry.questions.values() for q in qs]
            answers = [(ei, a) for ei, entry in enumerate(entries) for a in entry.answers.values()]
            self._vectors = embed_cached(embedder, [q for _, q in phrasings])
            self._vec_entry = np.array([ei for ei, _ in phrasings], dtype=np.int64)
            self._vec_text = [q for _, q in phrasings]
            self._answers = embed_cached(embedder, [a for _, a in answers], passage=True)
            self._ans_entry = np.array([ei for ei, _ in answers], dtype=np.int64)

    def _lexical(self, question: str, leave_out: str | None = None) -> dict[int, tuple[float, float]]:
        """Entry -> (confidence, BM25) of its best phrasing (other than `leave_out`)."""
        query = tokenize(question)
        if not query or not self.doc_entry:
            return {}
        scores = [float(s) for s in self._bm25.get_scores(query)]
        # Order numbers and other digits can't be in a FAQ: they don't count against confidence.
        uniq = {t for t in query if not any(c.isdigit() for c in t)} or set(query)
        total = sum(self.idf.get(t, self.unknown_idf) for t in uniq)
        best: dict[int, tuple[float, float]] = {}
        for doc, score in enumerate(scores):
            if score <= self.min_score or (leave_out is not None and self.doc_text[doc] == leave_out):
                continue
            conf = round(sum(self.idf[t] for t in uniq if t in self.doc_terms[doc]) / total, 6) if total else 0.0
            ei = self.doc_entry[doc]
            if ei not in best or (conf, score) > best[ei]:
                best[ei] = (conf, score)
        return best

    def explain(self, question: str, leave_out: str | None = None, without: int | None = None) -> list[Candidate]:
        """The entries that stand for the question, best fused first, each with its confidence.
        Empty for a question with no letter or character (punctuation, emoji). For the calibration
        (bench/faq_eval.py): `leave_out`, a stored phrasing to act as if absent; `without`, an entry
        to act as if absent (its phrasings are then questions the FAQ does not answer)."""
        if not _TOKEN_OK.search(unicodedata.normalize("NFKC", question).casefold()):
            return []
        lexical = self._lexical(question, leave_out)
        if without is not None:
            lexical.pop(without, None)
        if self.embedder is None:  # BM25 alone: the best phrasing's confidence, BM25 breaking ties
            out = [Candidate(ei, conf, 0.0, 0.0, conf, bm25, conf) for ei, (conf, bm25) in lexical.items()]
            out.sort(key=lambda c: (round(c.fused, 6), c.bm25), reverse=True)
            return out
        import numpy as np

        f = self.fusion
        q = self.embedder.embed([question])[0]
        n = len(self.entries)
        sem = np.full(n, -1.0)
        cos = self._vectors @ q
        if leave_out is not None:
            cos = np.where(np.array([t == leave_out for t in self._vec_text]), -1.0, cos)
        np.maximum.at(sem, self._vec_entry, cos)
        ans = np.full(n, -1.0)
        np.maximum.at(ans, self._ans_entry, self._answers @ q)
        if without is not None:
            sem[without] = ans[without] = -1.0
        lex = np.zeros(n)
        bm25 = np.zeros(n)
        for ei, (conf, score) in lexical.items():
            lex[ei], bm25[ei] = conf, score
        fused = f.lexical_weight * lex + (1 - f.lexical_weight) * (
            (sem - f.cos_low) / f.cos_span + f.answer_weight * (ans - f.answer_low) / f.answer_span)
        if without is not None:
            fused[without] = -np.inf
        order = np.argsort(-fused, kind="stable")
        if without is not None:
            order = order[order != without]
        lex_best = lex.max()
        zh = float(is_cjk(question))
        out = []
        for rank, ei in enumerate(order):
            other_sem = np.max(np.delete(sem, ei)) if n > 1 else -1.0  # a FAQ of one entry: no runner-up
            runner_up = fused[order[1]] if rank == 0 and len(order) > 1 else fused[order[0]]
            x = (1.0, sem[ei], sem[ei] - other_sem, lex[ei], float(lex_best > 0 and lex[ei] == lex_best), ans[ei],
                 fused[ei] - runner_up, zh)
            z = sum(c * v for c, v in zip(f.coef, x, strict=True))
            out.append(Candidate(int(ei), float(lex[ei]), float(sem[ei]), float(ans[ei]), float(fused[ei]),
                                 float(bm25[ei]), 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))))
        return out

    def lookup(self, question: str) -> FaqHit | None:
        """The best entry for the question with its confidence, or None when nothing matches."""
        ranked = self.explain(question)
        if not ranked:
            return None
        top = ranked[0]
        entry = self.entries[top.entry]
        return FaqHit(entry.id, entry.answer_for(is_cjk(question)), round(top.confidence, 4), top.bm25)


_indexes: dict[tuple[str, str, float], FaqIndex] = {}


def shared_index(path: str | Path | None, retrieval: str = "hybrid", min_score: float = 0.0) -> FaqIndex:
    """One index per FAQ file and settings in this process (the FAQ backend and an LLM backend's
    `faq_context` share it). `retrieval`: hybrid (BM25 with the bundled sentence embedding model)
    or bm25. Raises ValueError for another value or a bad file."""
    if retrieval not in ("hybrid", "bm25"):
        raise ValueError(f"faq retrieval must be hybrid or bm25, not {retrieval!r}")
    key = (str(Path(path or DEFAULT_PATH).resolve()), retrieval, min_score)
    index = _indexes.get(key)
    if index is None:
        embedder = None
        if retrieval == "hybrid":
            from .faq_embed import load_embedder

            embedder = load_embedder()
        index = _indexes[key] = FaqIndex(load_entries(key[0]), min_score=min_score, embedder=embedder)
    return index


class FaqBackend:
    """Options: path (default: the bundled demo FAQ), min_score, retrieval (hybrid: BM25 with the
    bundled sentence embedding model, the default; bm25: BM25 alone)."""

    def __init__(self, name: str, options: dict[str, Any] | None = None) -> None:
        options = options or {}
        self.name = name
        self.path = Path(options.get("path") or DEFAULT_PATH)
        self.index = shared_index(self.path, options.get("retrieval", "hybrid"), float(options.get("min_score", 0.0)))

    def lookup(self, question: str) -> FaqHit | None:
        return self.index.lookup(question)

    async def stream(self, ctx: BotContext) -> AsyncIterator[str | BotResult]:
        hit = self.lookup(ctx.question)
        if hit is None:
            yield BotResult("", 0.0)
        else:
            yield BotResult(hit.answer, hit.confidence)

    async def cancel(self, ctx: BotContext) -> None:
        """Local and instant: nothing to stop."""
