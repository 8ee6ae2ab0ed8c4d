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


class FaqIndex:
    """The retrieval part, usable on its own: ``lookup(question) -> FaqHit | None``."""

    def __init__(self, entries: list[FaqEntry], *, min_score: float = 0.0) -> None:
        self.entries = entries
        self.min_score = min_score
        self.doc_entry: list[int] = []
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

    def lookup(self, question: str) -> FaqHit | None:
        """The best entry for the question with its confidence, or None when nothing matches."""
        query = tokenize(question)
        if not query or not self.doc_entry:
            return None
        scores = [float(s) for s in self._bm25.get_scores(query)]
        # Order numbers and other digits can't be in a FAQ: they don't count against confidence.
        uniq = {t for t in query if not any(c.isdigit() for c in t)} or set(query)
        total = sum(self.idf.get(t, self.unknown_idf) for t in uniq)
        best: tuple[float, float, int] | None = None  # (confidence, bm25, doc)
        for doc, score in enumerate(scores):
            if score <= self.min_score:
                continue
            conf = sum(self.idf[t] for t in uniq if t in self.doc_terms[doc]) / total if total else 0.0
            if best is None or (round(conf, 6), score) > (round(best[0], 6), best[1]):
                best = (conf, score, doc)
        if best is None:
            return None
        # The phrasing that covers most of the question wins; BM25 breaks ties.
        confidence, score, doc = best
        entry = self.entries[self.doc_entry[doc]]
        return FaqHit(entry.id, entry.answer_for(is_cjk(question)), round(confidence, 4), score)


class FaqBackend:
    """Options: path (default: the bundled demo FAQ), min_score."""

    def __init__(self, name: str, options: dict[str, Any] | None = None) -> None:
        options = options or {}
        self.name = name
        self.path = Path(options.get("path") or DEFAULT_PATH)
        self.index = FaqIndex(
            load_entries(self.path), min_score=float(options.get("min_score", 0.0))
        )

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
