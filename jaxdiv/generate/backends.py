"""Generation backends behind one interface: `complete(requests) -> completions` (same order).

- `JaxBackend`: the JAX-native sampler on a local checkpoint.
- `OpenAIBackend`: any OpenAI chat-completions server (vLLM, llama.cpp's server, hosted
  APIs), over the standard library's HTTP client, with bounded concurrency, a per-request
  timeout, and retries with exponential backoff and full jitter on 429, 5xx, timeouts,
  connection errors and malformed replies. The API key is read from an environment
  variable at request time and never logged, returned or written.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import random
import socket
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
    def load(cls, cfg: JaxBackendConfig, mesh=None) -> "JaxBackend":
        import jax.numpy as jnp

        from jaxdiv.models.llama import load_pretrained, resolve_checkpoint, weights_hash

        path = resolve_checkpoint(cfg.model)
        dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[cfg.dtype]
        model, tokenizer = load_pretrained(path, dtype=dtype, param_dtype=dtype, mesh=mesh)
        generator = JaxGenerator(model, tokenizer, batch_buckets=cfg.batch_buckets,
                                 max_batch=cfg.max_batch, prompt_buckets=cfg.prompt_buckets,
                                 decode_chunk=cfg.decode_chunk, mesh=mesh)
        return cls(generator, f"jax:{Path(cfg.model).name}", weights_hash(path))

    def complete(self, requests: Sequence[Request]) -> list[Completion]:
        return self.generator.generate(requests)


class RetryableError(Exception):
    """A failure worth retrying (rate limit, server error, timeout, malformed reply)."""


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
        with concurrent.futures.ThreadPoolExecutor(self.cfg.concurrency) as pool:
            return list(pool.map(self._complete_one, requests))

    def _payload(self, request: Request) -> bytes:
        s = request.sampling
        body = {"model": self.cfg.model, "messages": list(request.messages),
                "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_new_tokens}
        if s.stop:
            body["stop"] = list(s.stop)[:4]  # the API takes at most four
        if s.top_k:
            body["top_k"] = s.top_k  # vLLM / llama.cpp extension
        if s.min_p:
            body["min_p"] = s.min_p
        if self.cfg.send_seed:
            body["seed"] = request.seed
        return json.dumps(body).encode()

    def _complete_one(self, request: Request) -> Completion:
        payload = self._payload(request)
        last_error = ""
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return self._post(request, payload)
            except RetryableError as err:
                last_error = str(err)
                if attempt == self.cfg.max_retries:
                    break
                self.retries += 1
                cap = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2 ** attempt)
                self._sleep(random.uniform(0, cap))  # full jitter
        raise GenerationError(f"{request.name}: {self.url} failed after "
                              f"{self.cfg.max_retries + 1} attempts: {last_error}")

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
                raise RetryableError(f"HTTP {err.code}") from None
            detail = err.read()[:300].decode("utf-8", "replace")
            raise GenerationError(f"{request.name}: {self.url} answered HTTP {err.code}: {detail}") from None
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
            raise RetryableError(f"malformed reply ({type(err).__name__}: {err}): {raw[:120]!r}") from None
        usage = reply.get("usage") or {}
        reason = {"stop": "eos", "length": "length"}.get(choice.get("finish_reason"), "eos")
        cut = [i for i in (text.find(s) for s in request.sampling.stop if s) if i >= 0]
        if cut:  # servers differ in whether they strip stop strings
            text, reason = text[:min(cut)], "stop"
        return Completion(row_id=request.row_id, text=text, finish_reason=reason,
                          prompt_tokens=int(usage.get("prompt_tokens", 0)),
                          completion_tokens=int(usage.get("completion_tokens", 0)))


def make_backend(cfg, mesh=None):
    """The backend a GenerateConfig names."""
    if cfg.backend == "jax":
        return JaxBackend.load(cfg.jax, mesh=mesh)
    return OpenAIBackend(cfg.openai)
