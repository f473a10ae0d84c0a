"""Lexical metrics and complexity proxies vs straightforward references, NLTK, and `diversity`."""

import gzip
import math

import numpy as np
import pytest

from jaxdiv.score.complexity import complexity_metrics
from jaxdiv.score.config import LexicalConfig
from jaxdiv.score.lexical import (compression_ratio, distinct_n, lexical_metrics, ngram_entropy,
                                  self_bleu, self_bleu_rows, self_repetition, tokenize)

from .peers import diversity_module


@pytest.fixture(scope="module")
def texts(trec_task):
    return list(trec_task.splits["train"]["text"][:60])


def test_tokenisation_is_documented_behaviour():
    assert tokenize("Don't stop!  Über 2 cafés.") == ["don", "'", "t", "stop", "!", "über", "2", "cafés", "."]


def test_distinct_n_and_entropy_small_example():
    docs = [["a", "b", "a", "b"], ["a", "b", "c"]]
    assert distinct_n(docs, 1) == pytest.approx(3 / 7)
    assert distinct_n(docs, 2) == pytest.approx(3 / 5)  # ab, ba, ab | ab, bc: no bigram crosses docs
    assert distinct_n([["a"]], 2) == 0.0
    p = np.array([3, 3, 1]) / 7
    assert ngram_entropy(docs, 1) == pytest.approx(-np.sum(p * np.log(p)))


def test_distinct_n_relation_to_diversity_package(texts):
    """`diversity` sums distinct-1..4 over the whitespace-joined corpus (n-grams cross documents)."""
    theirs = diversity_module("ngram_diversity").ngram_diversity_score(texts, 4)
    joined = [" ".join(texts).split(" ")]
    assert theirs == pytest.approx(round(sum(distinct_n(joined, n) for n in range(1, 5)), 3), abs=1e-12)
    ours = [distinct_n([tokenize(t) for t in texts], n) for n in range(1, 5)]
    assert all(0 < v <= 1 for v in ours) and theirs > 1  # theirs is on a 0..4 scale


def test_self_repetition_equals_diversity_package_on_same_tokens(texts):
    theirs = diversity_module("self_repetition").self_repetition_score(texts, n=2, verbose=False)
    assert self_repetition([t.split() for t in texts], 2) == pytest.approx(theirs, rel=1e-12)


def test_compression_ratio_and_relation_to_diversity_package(texts):
    raw = "\n".join(texts).encode()
    assert compression_ratio(texts) == pytest.approx(len(raw) / len(gzip.compress(raw, 9, mtime=0)))
    # `diversity` gzips the already gzipped bytes (a gzip file around gzip.compress): a smaller ratio.
    theirs = diversity_module("compression").compression_ratio(texts, "gzip")
    assert theirs < compression_ratio(texts) * 0.99


def test_self_bleu_equals_nltk_excluding_self(texts):
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    docs = [tokenize(t) for t in texts[:40]]
    smoothing = SmoothingFunction().method1
    reference = np.mean([sentence_bleu(docs[:i] + docs[i + 1:], hyp, smoothing_function=smoothing)
                         for i, hyp in enumerate(docs)])
    assert self_bleu(docs) == pytest.approx(reference, rel=1e-9)


def test_self_bleu_switches_to_a_seeded_sample(texts):
    cfg = LexicalConfig(self_bleu_max_exact=20)
    rows = self_bleu_rows(len(texts), cfg)
    assert len(rows) == 20 and np.array_equal(rows, self_bleu_rows(len(texts), cfg))  # seeded
    out = lexical_metrics(texts, cfg)
    assert out["self_bleu"] == pytest.approx(self_bleu([tokenize(texts[i]) for i in rows]))
    assert np.array_equal(self_bleu_rows(20, cfg), np.arange(20))  # exact up to the switch


def test_identical_texts_are_minimally_diverse():
    out = lexical_metrics(["what is the capital of peru ?"] * 5)
    assert out["self_bleu"] == pytest.approx(1.0)
    assert out["distinct_1"] == pytest.approx(7 / 35)
    assert out["ngram_entropy_4"] == pytest.approx(math.log(4))
    assert out["self_repetition"] == pytest.approx(math.log1p(4 * 4))  # 4 distinct 4-grams, 4 other docs


def test_complexity_proxies_small_example():
    out = complexity_metrics(["Hello world!", "A remarkable sentence, indeed."])
    assert out["length_tokens_mean"] == pytest.approx((3 + 6) / 2)
    assert out["type_token_ratio"] == pytest.approx(1.0)
    words = ["hello", "world", "a", "remarkable", "sentence", "indeed"]
    assert out["mean_word_length"] == pytest.approx(np.mean([len(w) for w in words]))
    assert out["long_word_share"] == pytest.approx(2 / 6)
    assert out["punctuation_share"] == pytest.approx(3 / 9)
