"""Per-row quality gates: a generated row that fails one is stored rejected, its reason the gate's name.

Each gate is on by default and switched in `GatesConfig` (`GenerateConfig.gates`). The runner
applies them to every chunk before it is appended, in this order; a row takes the first reason
that fires:

1. **truncated** (`gates.truncation`): the completion hit `max_new_tokens` (finish reason
   "length") in its first line, and that line has no natural end: the task's end mark (TREC: "?")
   where the task has one, else a sentence end (`.`, `!`, `?`, `…`, optionally followed by closing
   quotes or brackets). Applies to every task.
2. **echo** (`gates.echo`): the completion restates its prompt instead of answering it:
   - it starts like the prompt's own instruction lines ("Write one new ...", "Here are some ...",
     "Reply with ...", "Paraphrase this ..."); or
   - it keeps an unfilled template slot ("[country_name]", "{topic}", "[insert name]"); or
   - at least `echo_bigram_share` of its word bigrams, and at least 3, occur in the instruction
     (the prompt with the few-shot texts taken out); or
   - its word set has Jaccard similarity at least `echo_jaccard` with a few-shot example (a
     near copy; the exact copy is the parser's "copies a few-shot example").
3. **chatter** (`gates.chatter`): the completion talks as an assistant, not as the example asked
   for. Rules (case-insensitive, on the parsed text and on the raw output's first line):
   - meta-phrases about the reply or the task: "here is/here's/here are ..." (at the start, or
     "here's a/the/my/another" anywhere), "I'll start/suggest/write/give you ...", "how about (a)", "a good/great/
     interesting question", "new question", "I'd love/like to",
     "I'm ready to", "a related/another/follow-up question", "question could be", "text
     classifier" (the system prompt's words),
     "question:"/"example:" anywhere, "this (type of) question", "answer the question", "sure",
     "certainly", "of course", "absolutely" at the start, "as an AI", "(ready/happy/
     glad/here) to help/assist", "I can help", "I'd be happy", "I hope this helps",
     "(new) question/text/example/review/message/sentence N:" headers left over after the parse,
     a bare header line (at most 4 words ending in ":"), "let's ...", "the answer to/is",
     a text that starts by naming what it is ("This is a question", "A question about", "The
     first example");
   - addressing the user: "can/may/could I help/assist", "let me know", "feel
     free", "you asked/provided/gave", "your (...) question/request/query/snippet/review/turn/mind",
     "this query/prompt/instruction", "would you like me to / to know", "you can ask", "you're
     right", "can you write/create/help" at the start, "can you provide", "do you need", "is there anything".
   Ordinary second-person text ("What do you call a baby kangaroo?") is not chatter: the rules
   name the assistant's stock phrases, not the word "you".
4. **label_probe** (`gates.labels.label_probe`): a logistic-regression probe on MiniLM embeddings
   (`jaxdiv.score.quality.train_probe`) gives the row's intended label a probability below
   `min_probability`. Arm "budget" trains it only on the real rows the cell may see
   (`jaxdiv.data.tasks.budget_rows` with `real_budget`, `real_subset`); arm "oracle" on every
   real training label, and its reason is `label_probe_oracle` (the pool meta says "oracle" too).
5. **near_duplicate** (`gates.near_duplicate`): the row's MiniLM embedding has cosine at least
   `near_duplicate_threshold` (the score kernel's near-duplicate threshold, 0.95) with an EARLIER
   accepted row's, in row order; exact duplicates are left to the pool's dedup ("duplicate of X").

Rules 1-3 read only the row; 4 reads a probe fixed by the config; 5 reads the pool's accepted rows
of lower index, which are all stored before a chunk is gated (chunks go in row order). A resumed
job therefore decides every row as the uninterrupted job would.
A gate's reason replaces a parse reason (a truncated question is "truncated", not "does not end
with '?'"), so the reason counts say which gate a row failed.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv.data.pool import ACCEPTED, REJECTED, Pool, PoolRow, normalise
from jaxdiv.data.tasks import Task, budget_rows
from jaxdiv.generate.config import GatesConfig, GenerateConfig
from jaxdiv.score.diversity import HIGHEST, normalize_rows
from jaxdiv.score.quality import probabilities, train_probe

TRUNCATED, ECHO, CHATTER, NEAR_DUPLICATE = "truncated", "echo", "chatter", "near_duplicate"
LABEL_PROBE, LABEL_PROBE_ORACLE = "label_probe", "label_probe_oracle"
GATE_REASONS = (TRUNCATED, ECHO, CHATTER, LABEL_PROBE, LABEL_PROBE_ORACLE, NEAR_DUPLICATE)

# a text shares a bigram or two with any instruction by chance ("the film", "of the")
ECHO_MIN_BIGRAMS = 3
SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")
INSTRUCTION_START = re.compile(r"^(?:write (?:one|a) new|here are some|reply with|paraphrase this)\b",
                               re.IGNORECASE)
# an unfilled template slot copied from the kind of prompt the model was trained on
# ("the capital of [country_name]", "{topic}", "[insert name]")
TEMPLATE_SLOT = re.compile(r"[\[{<](?:[a-z]+(?:_[a-z]+)+|insert\b[^\]}>]*|your \w+)[\]}>]", re.IGNORECASE)
CHATTER_RULES = tuple(re.compile(rule, re.IGNORECASE) for rule in (
    # meta-phrases about the reply or the task itself
    r"^\W*here(?:'s| is| are)\b",
    r"^\W*(?:sure|certainly|of course|absolutely)\b\W",
    r"^\W*let(?:'s| us)\b",
    r"\bas an ai\b",
    r"\b(?:ready|happy|glad|here) to (?:help|assist)\b|\bi(?:'m| am) ready to\b",
    r"\b(?:related|another|follow-up) question\b|\bquestion could be\b",
    r"\btext classifier\b",  # the system prompt's words
    r"\bi can help\b",
    r"\bi(?:'d| would) be (?:happy|glad)\b",
    r"\bhope (?:this|that) helps\b",
    r"\bthe answer (?:to|for|would|is)\b",
    r"\bhere(?:'s| is) (?:a|an|the|my|one|another)\b",
    r"\bi(?:'ll| will) (?:start|suggest|write|provide|create|try|begin|give you)\b",
    r"^\W*how about\b|\bhow about a\b",
    r"\b(?:great|good|interesting) question\b",
    r"\bnew question\b",
    r"\bi(?:'d| would) (?:love|like) to\b",
    r"\b(?:question|example)\s*:",
    r"\b(?:this|that) (?:type of |kind of )?question\b",
    r"\banswer the question\b",
    r"^\W*(?:new |original )?(?:question|text|example|review|message|snippet|answer|sentence)"
    r"(?: \d+)?\s*:",
    r"^\W*(?:\S+\s+){0,3}\S+:\s*$",  # a bare header ("Original movie review snippet:"), nothing after it
    r"^\W*(?:(?:this|it) is )?(?:a|an|one|this|the|my) (?:new |possible |sample |first |original )?"
    r"(?:question|example|answer|query)s?\b",
    # addressing the user
    r"\b(?:can|may|could) i (?:help|assist)\b",
    r"\blet me know\b",
    r"\bfeel free\b",
    r"\byou (?:asked|provided|gave|shared)\b",
    r"\byour (?:\w+ ){0,2}(?:question|request|query|prompt|instruction|snippet|review|turn|mind)\b",
    r"\b(?:this|the) (?:query|prompt|instruction)\b",
    r"\bwould you like (?:me|to know)\b",
    r"\byou can ask\b",
    r"\byou(?:'re| are) right\b",
    r"^\W*can you (?:write|create|help)\b|\bcan you provide\b",
    r"\bdo you need\b",
    r"\bis there anything\b",
))


def _words(text: str) -> list[str]:
    return normalise(text).split()


def _bigrams(words: Sequence[str]) -> set[tuple[str, str]]:
    return set(zip(words, words[1:]))


def is_truncated(raw_output: str, text: str, finish_reason: str, must_end_with: str = "") -> bool:
    """Hit the token limit inside its first line, without the task's end mark or a sentence end."""
    if finish_reason != "length" or len([l for l in raw_output.splitlines() if l.strip()]) > 1:
        return False
    text = text.rstrip()
    return not (text.endswith(must_end_with) if must_end_with else SENTENCE_END.search(text))


def instruction_text(prompt: str, few_shot_texts: Sequence[str]) -> str:
    """The prompt's own words: the prompt with its few-shot examples taken out."""
    shots = {t.strip() for t in few_shot_texts}
    return "\n".join(line for line in prompt.splitlines() if line.strip() not in shots)


def is_echo(text: str, prompt: str, few_shot_texts: Sequence[str], bigram_share: float,
            jaccard: float) -> bool:
    """Restates the instruction, or nearly copies a few-shot example (module docstring, rule 2)."""
    if INSTRUCTION_START.search(text.strip()) or TEMPLATE_SLOT.search(text):
        return True
    words = _words(text)
    bigrams = _bigrams(words)
    shared = len(bigrams & _bigrams(_words(instruction_text(prompt, few_shot_texts))))
    if shared >= ECHO_MIN_BIGRAMS and shared >= bigram_share * len(bigrams):
        return True
    word_set = set(words)
    for shot in few_shot_texts:
        shot_set = set(_words(shot))
        if word_set and len(word_set & shot_set) >= jaccard * len(word_set | shot_set):
            return True
    return False


def is_chatter(text: str, raw_output: str = "") -> bool:
    """Talks as an assistant (module docstring, rule 3), in the parsed text or the raw first line."""
    first_line = next((l for l in raw_output.splitlines() if l.strip()), "")
    return any(rule.search(part) for part in (text, first_line) if part for rule in CHATTER_RULES)


def rule_reason(raw_output: str, text: str, finish_reason: str, prompt: str,
                few_shot_texts: Sequence[str], must_end_with: str, cfg: GatesConfig) -> str:
    """The first of the row-local gates (truncated, echo, chatter) that rejects a completion
    (`text`: what the parser made of `raw_output`), else ""."""
    if cfg.truncation and is_truncated(raw_output, text, finish_reason, must_end_with):
        return TRUNCATED
    if not text:
        return ""
    if cfg.echo and is_echo(text, prompt, few_shot_texts, cfg.echo_bigram_share, cfg.echo_jaccard):
        return ECHO
    if cfg.chatter and is_chatter(text, raw_output):
        return CHATTER
    return ""


@jax.jit
def max_cosine(x: jax.Array, y: jax.Array) -> jax.Array:
    """(rows of x, rows of y) cosine matrix."""
    return jnp.matmul(normalize_rows(x), normalize_rows(y).T, precision=HIGHEST)


def near_duplicate_verdicts(new: np.ndarray, earlier: np.ndarray, threshold: float,
                         new_keys: Sequence[str] | None = None, earlier_keys: set[str] = frozenset()
                         ) -> list[str]:
    """Row-order verdicts, "" (kept), NEAR_DUPLICATE or "exact": new row i is a near duplicate
    when its cosine with a kept earlier row, or with a kept new row j < i, reaches the threshold.
    With `new_keys` (dedup keys), a row whose key equals a kept row's is "exact": an exact
    duplicate, left to the pool's dedup (which rejects it as "duplicate of X"), and not kept."""
    both = np.concatenate([earlier, new]) if len(earlier) else new
    cosine = np.asarray(max_cosine(jnp.asarray(new), jnp.asarray(both))) if len(new) else None
    kept = np.zeros(len(both), bool)
    kept[:len(earlier)] = True
    keys = set(earlier_keys)
    verdicts = []
    for i in range(len(new)):
        if new_keys is not None and new_keys[i] in keys:
            verdicts.append("exact")
            continue
        flagged = bool(np.any(cosine[i, :len(earlier) + i][kept[:len(earlier) + i]] >= threshold))
        kept[len(earlier) + i] = not flagged
        if not flagged and new_keys is not None:
            keys.add(new_keys[i])
        verdicts.append(NEAR_DUPLICATE if flagged else "")
    return verdicts


def probe_training_rows(cfg: GenerateConfig, task: Task, real_budget: int, real_subset: int) -> list[int]:
    """Indices into the real training split that the label probe is trained on (its arm's rows:
    every row for the oracle, else `real_budget` per class of real subset `real_subset`)."""
    train = task.splits["train"]
    if cfg.gates.labels.label_probe == "oracle":
        return list(range(len(train)))
    groups = budget_rows(train, task.num_labels, real_budget or None, real_subset)
    return sorted(i for rows in groups.values() for i in rows)


def probe_meta(cfg: GenerateConfig, task: Task, real_budget: int, real_subset: int) -> dict:
    """The probe arm as the pool meta records it ({"arm": "off"} without a probe)."""
    arm = cfg.gates.labels.label_probe
    if arm == "off":
        return {"arm": "off"}
    return {"arm": arm, "oracle": arm == "oracle",
            "reason": LABEL_PROBE_ORACLE if arm == "oracle" else LABEL_PROBE,
            "trained_on": ("every real training label (ORACLE: labels the cell does not have)"
                           if arm == "oracle" else "the cell's real budget rows"),
            "training_rows": len(probe_training_rows(cfg, task, real_budget, real_subset)),
            "min_probability": cfg.gates.labels.min_probability}


class LabelProbe:
    """The label-fidelity probe of one pool: which real rows train it is fixed by the config."""

    def __init__(self, cfg: GenerateConfig, task: Task, embedder, real_budget: int, real_subset: int):
        self._meta = probe_meta(cfg, task, real_budget, real_subset)
        self.min_probability = cfg.gates.labels.min_probability
        self.reason = self._meta["reason"]
        train = task.splits["train"]
        indices = probe_training_rows(cfg, task, real_budget, real_subset)
        self.training_ids = [train["id"][i] for i in indices]
        x = embedder.embed([train["text"][i] for i in indices], progress=False)
        self.params = train_probe(x, [train["label"][i] for i in indices], task.num_labels)
        self.label_index = {name: i for i, name in enumerate(task.label_names)}

    def meta(self) -> dict:
        return self._meta

    def keeps(self, x: np.ndarray, intended: Sequence[str]) -> np.ndarray:
        """Whether the probe gives each row's intended label at least min_probability."""
        probs = probabilities(self.params, x)
        return probs[np.arange(len(intended)), [self.label_index[l] for l in intended]] >= self.min_probability


class Gates:
    """The gates of one generation job; `apply` gates a chunk of parsed rows before it is stored."""

    def __init__(self, cfg: GenerateConfig, task: Task, must_end_with: str = "", *, real_budget: int = 0,
                 real_subset: int = 0):
        self.job, self.cfg, self.task, self.must_end_with = cfg, cfg.gates, task, must_end_with
        self.real_rows = (real_budget, real_subset)  # what the label probe may train on
        self.dedup = cfg.dedup
        self._accepted: np.ndarray | None = None  # embeddings of the pool's accepted rows, row order
        self._accepted_keys: set[str] = set()

    # The embedder and the probe load on first use: a finished pool reopened costs nothing.
    @functools.cached_property
    def embedder(self):
        from jaxdiv.score.embed import Embedder

        return Embedder(self.cfg.embedder, self.job.mesh)

    @functools.cached_property
    def probe(self) -> LabelProbe | None:
        return (LabelProbe(self.job, self.task, self.embedder, *self.real_rows)
                if self.cfg.labels.label_probe != "off" else None)

    def meta(self) -> dict:
        """What the gates are, for pool.json (part of the pool's identity)."""
        return {"label_probe": probe_meta(self.job, self.task, *self.real_rows)}

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.embedder.dim), np.float32)
        return self.embedder.embed(texts, progress=False)

    def apply(self, pool: Pool, plans, rows: list[PoolRow]) -> list[PoolRow]:
        """The rows with every gate's verdict; `plans` are the rows' RowPlans (prompt, few-shot)."""
        out = []
        for plan, row in zip(plans, rows):
            reason = rule_reason(row.raw_output, row.text, row.finish_reason, plan.prompt,
                                 plan.few_shot_texts, self.must_end_with, self.cfg)
            out.append(dataclasses.replace(row, status=REJECTED, reason=reason) if reason else row)
        if self.probe is not None:
            live = [i for i, r in enumerate(out) if r.status == ACCEPTED]
            keeps = self.probe.keeps(self._embed([out[i].text for i in live]),
                                     [out[i].intended_label for i in live])
            for i, keep in zip(live, keeps):
                if not keep:
                    out[i] = dataclasses.replace(out[i], status=REJECTED, reason=self.probe.reason)
        if self.cfg.near_duplicate:
            out = self._near_duplicates(pool, out)
        return out

    def _near_duplicates(self, pool: Pool, rows: list[PoolRow]) -> list[PoolRow]:
        if self._accepted is None:  # first chunk of this process: the stored accepted rows (resume)
            texts = [r["text"] for r in pool.rows() if r["status"] == ACCEPTED]
            self._accepted = self._embed(texts)
            self._accepted_keys = {normalise(t) for t in texts}
        live = [i for i, row in enumerate(rows) if row.status == ACCEPTED]
        x = self._embed([rows[i].text for i in live])
        keys = [normalise(rows[i].text) for i in live] if self.dedup else None
        verdicts = near_duplicate_verdicts(x, self._accepted, self.cfg.near_duplicate_threshold, keys,
                                        self._accepted_keys)
        for j, (i, verdict) in enumerate(zip(live, verdicts)):
            if verdict == NEAR_DUPLICATE:
                rows[i] = dataclasses.replace(rows[i], status=REJECTED, reason=NEAR_DUPLICATE)
            elif not verdict and keys is not None:
                self._accepted_keys.add(keys[j])
        self._accepted = np.concatenate([self._accepted, x[np.asarray([not v for v in verdicts], bool)]])
        return rows
