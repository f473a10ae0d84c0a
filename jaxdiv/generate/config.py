"""Config sections of the generate stage."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxdiv.configlib import ConfigError, param, section
from jaxdiv.data.tasks import TaskConfig
from jaxdiv.score.config import DiversityConfig, EmbedderConfig
from jaxdiv.sharding import MeshConfig


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn. temperature 0 is greedy."""

    temperature: float = param(0.8, ge=0.0, help="softmax temperature; 0 = greedy (argmax)")
    top_p: float = param(0.95, gt=0.0, le=1.0, help="nucleus sampling: keep the smallest set of "
                         "tokens whose probability reaches top_p (1 = off); the JAX sampler looks "
                         "among the 256 most likely tokens (exact with JAXDIV_CPU_FAST_PATHS=1)")
    top_k: int = param(0, ge=0, help="keep only the k most likely tokens (0 = off)")
    min_p: float = param(0.0, ge=0.0, lt=1.0, help="drop tokens less likely than min_p x the top "
                         "token's probability (0 = off)")
    max_new_tokens: int = param(64, ge=1, help="stop a completion after this many new tokens")
    stop: tuple[str, ...] = param((), help="stop strings: a completion ends before the first one")


@dataclasses.dataclass(frozen=True)
class JaxBackendConfig:
    """The JAX-native generator: checkpoint, static shapes, precision."""

    model: str = param("smollm2-135m-instruct", help="a packaged asset name, a GGUF file, or an HF "
                       "Llama/Qwen2 safetensors dir (with tokenizer.json)")
    batch_buckets: tuple[int, ...] = param((), help="batch sizes compiled for; a batch is padded up "
                                           "to the next bucket, and shrinks to a smaller one as its "
                                           "rows finish; empty: max_batch, a quarter of it, and so "
                                           "on down to 2")
    max_batch: int = param(32, ge=1, help="the largest batch when batch_buckets is empty")
    prompt_buckets: tuple[int, ...] = param((), help="prompt lengths compiled for; prompts are "
                                            "left-padded up to the next bucket; empty: sized from the "
                                            "prompts, each batch's longest rounded up to a multiple of "
                                            "64 (of 1/4 of the power of two below it, past 256)")
    decode_chunk: int = param(16, ge=1, help="decode steps run on device between host checks for "
                              "stop strings and finished rows")
    dtype: str = param("float32", help="compute and param dtype: float32 or bfloat16")

    def check(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype: {self.dtype!r} is not float32 or bfloat16")
        for name in ("batch_buckets", "prompt_buckets"):
            values = getattr(self, name)
            if any(v < 1 for v in values) or list(values) != sorted(set(values)):
                raise ConfigError(f"{name}: must be increasing positive sizes (or empty: "
                                  f"automatic), got {values}")


@dataclasses.dataclass(frozen=True)
class OpenAIBackendConfig:
    """Any server that speaks the OpenAI chat-completions API (vLLM, llama.cpp server, hosted)."""

    base_url: str = param("http://127.0.0.1:8000/v1", help="API root; /chat/completions is appended")
    model: str = param("", help="the model name sent in each request: a label that a server "
                       "serving one model (llama.cpp) may ignore; each row records the model id and "
                       "system_fingerprint the server reports (served) beside it")
    api_key_env: str = param("OPENAI_API_KEY", help="environment variable holding the API key "
                             "(never logged or written)")
    concurrency: int = param(8, ge=1, help="requests in flight at once")
    timeout_s: float = param(60.0, gt=0.0, help="per-request timeout")
    max_retries: int = param(100, ge=0, help="most retries of one request on 429 / 5xx / timeouts / "
                             "malformed replies (retry_deadline_s usually ends them first)")
    retry_deadline_s: float = param(600.0, gt=0.0, help="a request retries for at most this long "
                                    "after its first try (a line on stderr says so while waiting); "
                                    "then its row is stored as rejected with reason "
                                    "'request_failed: ...' and tried again by the next run")
    backoff_s: float = param(0.5, gt=0.0, help="first retry delay; doubles each retry, with jitter "
                             "(a server's Retry-After header takes precedence)")
    backoff_max_s: float = param(30.0, gt=0.0, help="cap on one retry delay")
    send_seed: bool = param(True, help="send the per-row seed (servers that support it reproduce)")
    send_top_k_min_p: bool = param(True, help="send top_k and min_p (vLLM / llama.cpp extensions) "
                                   "even when 0, so the server's own defaults never apply unseen; "
                                   "false only for APIs that reject them (OpenAI's own has neither)")


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """A diversity recipe: which mechanism, at which level D0-D6 (see jaxdiv/generate/recipes.py)."""

    name: str = param("topics", help="topics | paraphrase | temperature")
    level: int = param(3, ge=0, le=6, help="diversity level D0 (lowest) .. D6 (highest)")
    topic_counts: tuple[int, ...] = param((1, 5, 20, 100, 1000, 5000, 10000),
                                          help="topics/attributes drawn from at levels D0..D6")
    paraphrase_fractions: tuple[float, ...] = param(
        (0.95, 0.8, 0.6, 0.4, 0.2, 0.1, 0.0),
        help="paraphrase recipe: share of rows replaced by paraphrases of seed rows at D0..D6")
    paraphrase_seeds: int = param(8, ge=1, help="paraphrase recipe: how many seed rows are paraphrased")
    paraphrase_base_level: int = param(3, ge=0, le=6, help="paraphrase recipe: the topic level of "
                                       "the rows that are not paraphrases")
    temperatures: tuple[float, ...] = param((0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3),
                                            help="temperature recipe: sampling temperature at D0..D6")
    few_shot: int = param(3, ge=0, help="real labelled examples shown in each prompt (drawn from "
                          "the rows `demonstrations` names)")
    demonstrations: str = param("budget", help="which real rows the few-shot examples and paraphrase "
                                "sources come from: budget = the rows the cell may see (real_budget "
                                "per class, in real_subset's order; the whole training split when "
                                "real_budget is 0); all_train = the whole training split even under a "
                                "budget, a label leak, marked as one in pool.json (meta label_leak)")
    shots_as: str = param("turns", help="how the few-shot examples are shown: turns = as earlier "
                          "chat turns, each a request the assistant answered with the example; list = "
                          "listed in the request message (the form before issue 14: on SmolLM2 it "
                          "gave 44 accepted rows of 96 against 92 with turns, and more echo)")
    topics_file: str = param("", help="user-supplied topics (one a line, or JSONL with a 'topic' "
                             "field); empty: LLM-generated, cached and versioned")
    topics_cache: str = param("", help="folder of the cached LLM-generated topic lists "
                              "(empty: $JAXDIV_CACHE/topics)")

    def check(self) -> None:
        if self.name not in ("topics", "paraphrase", "temperature"):
            raise ConfigError(f"name: unknown recipe {self.name!r} (topics, paraphrase, temperature)")
        if self.shots_as not in ("list", "turns"):
            raise ConfigError(f"shots_as: {self.shots_as!r} is not list or turns")
        if self.demonstrations not in ("budget", "all_train"):
            raise ConfigError(f"demonstrations: {self.demonstrations!r} is not budget or all_train")
        for name in ("topic_counts", "paraphrase_fractions", "temperatures"):
            if len(getattr(self, name)) != 7:
                raise ConfigError(f"{name}: needs 7 values, one per level D0..D6")
        if any(not 0.0 <= f <= 1.0 for f in self.paraphrase_fractions):
            raise ConfigError("paraphrase_fractions: values must lie in [0, 1]")


@dataclasses.dataclass(frozen=True)
class LabelsConfig:
    """Label fidelity gate: a probe on MiniLM embeddings keeps a row when it gives the intended
    label at least `min_probability` (jaxdiv/generate/gates.py)."""

    label_probe: Literal["budget", "oracle", "off"] = param(
        "budget", help="budget: the probe is trained only on the real rows the cell may see "
        "(real_budget per class of real subset real_subset; all training rows when real_budget is 0); "
        "oracle: trained on every real training label, which the cell does not have (named an oracle "
        "in the pool meta, the rejection reason and reports); off: no probe. A budget under ~8 rows "
        "per class gives a weak probe that may reject most rows of a class (the pool then runs short)")
    min_probability: float = param(0.5, ge=0.0, le=1.0, help="keep a row when the probe's probability "
                                   "of its intended label is at least this")


@dataclasses.dataclass(frozen=True)
class GatesConfig:
    """Per-row quality gates; a gated row is stored rejected with the gate's name as its reason
    (the rules are documented in jaxdiv/generate/gates.py)."""

    truncation: bool = param(True, help="reject a completion that hit max_new_tokens without a natural "
                             "end (the task's end mark, else a sentence end)")
    echo: bool = param(True, help="reject a completion that restates the prompt's instruction or "
                       "copies a few-shot example")
    echo_bigram_share: float = param(0.4, gt=0.0, le=1.0, help="echo: share of the completion's word "
                                     "bigrams that also occur in the instruction, at or above which it "
                                     "is an echo (and at least 3 of them)")
    echo_jaccard: float = param(0.75, gt=0.0, le=1.0, help="echo: word-set Jaccard similarity to any "
                                "few-shot example at or above which it is an echo")
    chatter: bool = param(True, help="reject assistant chatter: meta-phrases ('Here's a new ...', "
                          "'Sure!', 'As an AI', 'I'm ready to help') and addressing the user")
    near_duplicate: bool = param(True, help="reject a row whose MiniLM embedding has cosine >= "
                                 "near_duplicate_threshold with an earlier accepted row's (row order, "
                                 "so resume decides the same)")
    near_duplicate_threshold: float = param(
        DiversityConfig().near_duplicate_threshold, ge=-1.0, le=1.0,
        help="cosine at or above which a row is a near duplicate (the score kernel's threshold)")
    labels: LabelsConfig = section(LabelsConfig)
    embedder: EmbedderConfig = section(EmbedderConfig)


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """The generate stage's own settings: recipe, sampling, backend, gates. What a job shares with
    the other stages (task, rows, workdir, seed, real budget) is passed to `run_generate` beside it."""

    recipe: RecipeConfig = section(RecipeConfig)
    sampling: SamplingConfig = section(SamplingConfig)
    backend: str = param("jax", help="jax (the JAX-native generator) or openai (an HTTP server)")
    jax: JaxBackendConfig = section(JaxBackendConfig)
    openai: OpenAIBackendConfig = section(OpenAIBackendConfig)
    mesh: MeshConfig = section(MeshConfig)
    chunk_rows: int = param(32, ge=1, help="rows per atomically appended pool chunk; a chunk's "
                            "rows are sorted by prompt length into batches")
    dedup: bool = param(True, help="reject exact (normalised) duplicate texts")
    gates: GatesConfig = section(GatesConfig)

    def check(self) -> None:
        if self.backend not in ("jax", "openai"):
            raise ConfigError(f"backend: {self.backend!r} is not jax or openai")


@dataclasses.dataclass(frozen=True)
class GenerateJob(GenerateConfig):
    """A `jaxdiv generate` job: task x recipe x level -> a labelled synthetic pool. The stage's
    settings plus the values a study sets per pool (`jaxdiv run` passes those itself)."""

    task: TaskConfig = section(TaskConfig)
    n: int = param(600, ge=1, help="rows to generate (accepted + rejected)")
    workdir: str = param("pools/run", help="the pool directory")
    seed: int = param(0, help="global seed: prompts, topics, few-shot draws and sampling derive from it")
    real_budget: int = param(0, ge=0, help="real labelled rows per class the generator may see "
                             "(few-shot demonstrations, the label-fidelity probe): the study cell's "
                             "label budget, so no label leaks into a cell; 0: the whole training split")
    real_subset: int = param(0, help="seed of which real rows make up that budget "
                             "(jaxdiv.data.tasks.budget_rows; the study cell's real subset)")
