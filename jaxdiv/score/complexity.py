"""Complexity proxies: cheap, documented per-text statistics, averaged (or summarised) over a pool.

All use `jaxdiv.score.lexical.tokenize`, so "tokens" here are the lexical metrics' tokens:
- length_tokens_{mean,std,p10,p50,p90}: tokens per text;
- length_chars_mean: characters per text;
- type_token_ratio: mean over texts of distinct tokens / tokens (texts with no token count 0);
- mean_word_length: characters per word token (tokens made of word characters), over the pool;
- long_word_share: share of word tokens with at least 7 characters (a readability proxy);
- punctuation_share: share of tokens that are punctuation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxdiv.score.lexical import tokenize


def complexity_metrics(texts: Sequence[str]) -> dict[str, float]:
    docs = [tokenize(t) for t in texts]
    lengths = np.array([len(d) for d in docs], dtype=np.float64)
    words = [tok for d in docs for tok in d if tok[0].isalnum() or tok[0] == "_"]
    word_lengths = np.array([len(w) for w in words], dtype=np.float64)
    total_tokens = max(int(lengths.sum()), 1)
    out = {"length_tokens_mean": float(lengths.mean()), "length_tokens_std": float(lengths.std())}
    for q in (10, 50, 90):
        out[f"length_tokens_p{q}"] = float(np.percentile(lengths, q))
    out["length_chars_mean"] = float(np.mean([len(t) for t in texts]))
    out["type_token_ratio"] = float(np.mean([len(set(d)) / len(d) if d else 0.0 for d in docs]))
    out["mean_word_length"] = float(word_lengths.mean()) if words else 0.0
    out["long_word_share"] = float(np.mean(word_lengths >= 7)) if words else 0.0
    out["punctuation_share"] = 1.0 - len(words) / total_tokens if lengths.sum() else 0.0
    return out
