"""Lexical diversity: distinct-n, n-gram entropy, self-BLEU, gzip compression ratio, self-repetition.

Tokenisation (the same for every lexical metric, and for the complexity proxies):
`tokenize(text)` lower-cases the text and splits it into runs of word characters (Unicode `\\w+`)
and single punctuation characters (`[^\\w\\s]`): "Don't stop!" -> ["don", "'", "t", "stop", "!"].
N-grams never cross a document boundary.

- distinct-n: unique n-grams / all n-grams of the corpus, for each n separately (0 when the
  corpus has no n-gram of that order). The `diversity` package instead *sums* distinct-1..4 over
  the whitespace-joined corpus (range 0..4); the tests show the exact relation.
- n-gram entropy: Shannon entropy (nats) of the corpus n-gram frequency distribution.
- self-BLEU: mean over texts of BLEU-4 (uniform weights, NLTK's smoothing method 1) of the text
  against every *other* text as references. Exact while n <= `self_bleu_max_exact`; above that
  the set is a seeded sample of that many texts, so the number of references (which self-BLEU
  grows with) stays fixed; the output says so.
- compression ratio: bytes of the newline-joined corpus / bytes of its gzip (level 9, mtime 0).
- self-repetition (Salkar et al.): mean over texts of log(1 + sum over the text's distinct
  n-grams of the number of other texts that contain it).
"""

from __future__ import annotations

import collections
import gzip
import math
import re
from typing import Sequence

import numpy as np

from jaxdiv.score.config import LexicalConfig

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def corpus_ngram_counts(docs: Sequence[Sequence[str]], n: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for tokens in docs:
        counts.update(ngrams(tokens, n))
    return counts


def distinct_n(docs: Sequence[Sequence[str]], n: int) -> float:
    counts = corpus_ngram_counts(docs, n)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def ngram_entropy(docs: Sequence[Sequence[str]], n: int) -> float:
    counts = np.fromiter(corpus_ngram_counts(docs, n).values(), dtype=np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-np.sum(p * np.log(p)))


def compression_ratio(texts: Sequence[str]) -> float:
    raw = "\n".join(texts).encode("utf-8")
    return len(raw) / len(gzip.compress(raw, compresslevel=9, mtime=0)) if raw else 0.0


def self_repetition(docs: Sequence[Sequence[str]], n: int = 4) -> float:
    doc_grams = [set(ngrams(tokens, n)) for tokens in docs]
    document_frequency: collections.Counter = collections.Counter()
    for grams in doc_grams:
        document_frequency.update(grams)
    scores = [math.log1p(sum(document_frequency[g] - 1 for g in grams)) for grams in doc_grams]
    return float(np.mean(scores)) if scores else 0.0


def self_bleu(docs: Sequence[Sequence[str]], max_n: int = 4, epsilon: float = 0.1) -> float:
    """Mean BLEU of each doc against all the others, in O(total n-grams).

    A hypothesis n-gram's count is clipped by its largest count in any *other* doc: each n-gram
    keeps its two largest per-doc counts and the doc holding the largest, so excluding the
    hypothesis itself costs O(1). Matches nltk's sentence_bleu with SmoothingFunction().method1.
    """
    if len(docs) < 2:
        raise ValueError("self-BLEU needs at least 2 texts")
    per_order = []
    for n in range(1, max_n + 1):
        doc_counts = [collections.Counter(ngrams(tokens, n)) for tokens in docs]
        top: dict[tuple[str, ...], list] = {}  # n-gram -> [largest count, its doc, second largest]
        for doc, counts in enumerate(doc_counts):
            for gram, count in counts.items():
                entry = top.get(gram)
                if entry is None:
                    top[gram] = [count, doc, 0]
                elif count > entry[0]:
                    top[gram] = [count, doc, entry[0]]
                elif count > entry[2]:
                    entry[2] = count
        per_order.append((doc_counts, top))

    lengths = np.array([len(tokens) for tokens in docs])
    order = np.sort(lengths)
    scores = []
    for doc, tokens in enumerate(docs):
        numerators, denominators = [], []
        for doc_counts, top in per_order:
            clipped = 0
            for gram, count in doc_counts[doc].items():
                best, holder, second = top[gram]
                clipped += min(count, second if holder == doc else best)
            numerators.append(clipped)
            denominators.append(max(1, sum(doc_counts[doc].values())))
        if numerators[0] == 0:
            scores.append(0.0)
            continue
        c = len(tokens)
        r = _closest_other_length(order, c)
        brevity = 1.0 if c > r else (0.0 if c == 0 else math.exp(1.0 - r / c))
        log_p = [math.log((num if num else epsilon) / den) for num, den in zip(numerators, denominators)]
        scores.append(brevity * math.exp(math.fsum(log_p) / max_n))
    return float(np.mean(scores))


def _closest_other_length(sorted_lengths: np.ndarray, length: int) -> int:
    """The reference length closest to `length` (ties: the shorter), the doc's own length once removed."""
    i = int(np.searchsorted(sorted_lengths, length))
    others = np.concatenate([sorted_lengths[:i], sorted_lengths[i + 1:]])  # drops one copy of itself
    j = int(np.searchsorted(others, length))
    candidates = [int(others[k]) for k in (j - 1, j) if 0 <= k < len(others)]
    return min(candidates, key=lambda ref: (abs(ref - length), ref))


def self_bleu_rows(n: int, cfg: LexicalConfig) -> np.ndarray:
    """The texts self-BLEU runs over: all of them up to the switch, else a seeded sample."""
    if n <= cfg.self_bleu_max_exact:
        return np.arange(n)
    return np.sort(np.random.default_rng(cfg.seed).choice(n, cfg.self_bleu_max_exact, replace=False))


def lexical_metrics(texts: Sequence[str], cfg: LexicalConfig = LexicalConfig()) -> dict[str, float]:
    """Every lexical metric of a corpus (see the module docstring for the definitions)."""
    docs = [tokenize(t) for t in texts]
    out = {}
    for n in range(1, cfg.max_n + 1):
        out[f"distinct_{n}"] = distinct_n(docs, n)
        out[f"ngram_entropy_{n}"] = ngram_entropy(docs, n)
    sample = [docs[i] for i in self_bleu_rows(len(docs), cfg)]
    out["self_bleu"] = self_bleu(sample) if len(sample) >= 2 else 0.0
    out["compression_ratio"] = compression_ratio(texts)
    out["self_repetition"] = self_repetition(docs, cfg.self_repetition_n)
    return out
