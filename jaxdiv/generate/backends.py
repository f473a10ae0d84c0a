"""Generation backends behind one interface: `complete(requests) -> completions` (same order).

- `JaxBackend`: the JAX-native sampler on a local checkpoint.
- `OpenAIBackend`: any OpenAI chat-completions server (vLLM, llama.cpp's server, hosted
  APIs), over the standard library's HTTP client, with bounded concurrency, a per-request
  timeout, and retries on 429, 5xx, timeouts, connection errors and malformed replies
  (the server's Retry-After, else exponential backoff with full jitter) until a total
  deadline. A request that runs out of it comes back as a Completion with `error` set
  (stored as a rejected row, retried by the next run) rather than aborting the job. Every
  sampling parameter a row records is sent explicitly (servers default top_k / min_p
  otherwise), and what the server reports about itself (model id, system_fingerprint) is
  returned in `served`. The API key is read from an environment variable at request time
  and redacted from every message.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import http.client
import itertools
import json
import os
import random
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from jaxdiv.generate.config import JaxBackendConfig, OpenAIBackendConfig
from jaxdiv.generate.sampler import Completion, GenerationError, JaxGenerator, Request


class JaxBackend:
    def __init__(self, generator: JaxGenerator, generator_id: str, weights_hash: str):
        self.generator, self.generator_id, self.weights_hash = generator, generator_id, weights_hash

    @classmethod
    def load(cls, cfg: JaxBackendConfig, mesh=None, rules=None) -> "JaxBackend":
        import jax.numpy as jnp

        from jaxdiv.models.checkpoints import load_pretrained, resolve_checkpoint, weights_hash

        path = resolve_checkpoint(cfg.model)
        dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[cfg.dtype]
        model, tokenizer = load_pretrained(path, dtype=dtype, param_dtype=dtype, mesh=mesh, rules=rules)
        generator = JaxGenerator(model, tokenizer, batch_buckets=cfg.batch_buckets,
                                 max_batch=cfg.max_batch, prompt_buckets=cfg.prompt_buckets,
                                 decode_chunk=cfg.decode_chunk, mesh=mesh, rules=rules)
        return cls(generator, f"jax:{Path(cfg.model).name}", weights_hash(path))

    def complete(self, requests: Sequence[Request]) -> list[Completion]:
        return self.generator.generate(requests)


class RetryableError(Exception):
    """A failure worth retrying (rate limit, server error, timeout, malformed reply)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after  # seconds the server asked us to wait


class OpenAIBackend:
    def __init__(self, cfg: OpenAIBackendConfig, *, sleep=time.sleep):
        if not cfg.model:
            raise GenerationError("openai.model: name the model the server should run")
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.generator_id = f"openai:{cfg.model}@{cfg.base_url}"
        self.weights_hash = ""  # unknown behind an API
        self._sleep = sleep
        self.retries = 0  # total retries so far (for progress reports and tests)

    def complete(self, requests: Sequence[Request]) -> list[Completion]:
        pool = concurrent.futures.ThreadPoolExecutor(self.cfg.concurrency)
        try:
            return list(pool.map(self._complete_one, requests))
        finally:
            # On Ctrl-C, do not wait for the requests in flight (a slow server holds them for
            # timeout_s); nothing of this chunk is stored yet, so the next run asks again.
            pool.shutdown(wait=False, cancel_futures=True)

    def _payload(self, request: Request) -> bytes:
        s = request.sampling
        # Every parameter a row records, zeros included: a server fills in its own defaults
        # (llama.cpp: top_k 40, min_p 0.05) for what is left out. top_k / min_p are vLLM and
        # llama.cpp extensions, where 0 disables them.
        body = {"model": self.cfg.model, "messages": list(request.messages),
                "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_new_tokens}
        if self.cfg.send_top_k_min_p:
            body.update(top_k=s.top_k, min_p=s.min_p)
        if s.stop:
            body["stop"] = list(s.stop)[:4]  # the API takes at most four
        if self.cfg.send_seed:
            body["seed"] = request.seed
        return json.dumps(body).encode()

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.cfg.api_key_env, "")
        return text.replace(key, "[api key redacted]") if key else text

    def _complete_one(self, request: Request) -> Completion:
        payload = self._payload(request)
        deadline = time.monotonic() + self.cfg.retry_deadline_s
        for attempt in itertools.count(1):
            try:
                return self._post(request, payload)
            except RetryableError as err:
                error = err
            left = deadline - time.monotonic()
            if attempt > self.cfg.max_retries or left <= 0:
                return Completion(row_id=request.row_id, text="", finish_reason="error", prompt_tokens=0,
                                  completion_tokens=0,
                                  error=self._redact(f"{request.name}: {self.url} failed after {attempt} attempts: {error}"))
            self.retries += 1
            cap = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2 ** (attempt - 1))
            delay = min(left, error.retry_after if error.retry_after is not None
                        else random.uniform(0, cap))  # full jitter
            if delay >= 1.0:
                print(self._redact(f"jaxdiv generate: {self.url}: {error}; retrying in {delay:.0f} s "
                                   f"(giving up in {left:.0f} s)"), file=sys.stderr, flush=True)
            self._sleep(delay)

    def _post(self, request: Request, payload: bytes) -> Completion:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        http_request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(http_request, timeout=self.cfg.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            if err.code == 429 or err.code >= 500:
                raise RetryableError(f"HTTP {err.code}", _retry_after(err.headers.get("Retry-After"))) from None
            detail = " ".join(err.read()[:300].decode("utf-8", "replace").split())
            raise GenerationError(self._redact(f"{request.name}: {self.url} answered HTTP {err.code}: {detail}")) from None
        except (TimeoutError, socket.timeout) as err:
            raise RetryableError(f"timeout after {self.cfg.timeout_s}s ({err})") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError) as err:
            raise RetryableError(f"connection error: {getattr(err, 'reason', err)}") from None
        try:
            reply = json.loads(raw)
            choice = reply["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, UnicodeDecodeError) as err:
            raise RetryableError(self._redact(f"malformed reply ({type(err).__name__}: {err}): "
                                              f"{raw[:120]!r}")) from None
        usage = reply.get("usage") or {}
        reason = {"stop": "eos", "length": "length"}.get(choice.get("finish_reason"), "eos")
        cut = [i for i in (text.find(s) for s in request.sampling.stop if s) if i >= 0]
        if cut:  # servers differ in whether they strip stop strings
            text, reason = text[:min(cut)], "stop"
        served = {k: reply[k] for k in ("model", "system_fingerprint") if reply.get(k) is not None}
        return Completion(row_id=request.row_id, text=text, finish_reason=reason,
                          prompt_tokens=_count(usage.get("prompt_tokens")),
                          completion_tokens=_count(usage.get("completion_tokens")), served=served)


def _count(value) -> int:
    """A token count from `usage` (servers send null or omit it)."""
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def make_backend(cfg, mesh=None):
    """The backend a GenerateConfig names (a JAX one placed on `mesh` by cfg.mesh's rules, if given)."""
    if cfg.backend == "jax":
        return JaxBackend.load(cfg.jax, mesh=mesh, rules=None if mesh is None else cfg.mesh.logical_axis_rules)
    return OpenAIBackend(cfg.openai)
