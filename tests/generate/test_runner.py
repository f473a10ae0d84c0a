"""End to end on the real SmolLM2: `jaxdiv generate` killed and resumed; the OpenAI backend
against a real local HTTP server (429, 500, slow and malformed replies); LLM topic lists."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jaxdiv.configlib import apply_overrides
from jaxdiv.data.pool import Pool
from jaxdiv.generate.backends import JaxBackend, OpenAIBackend
from jaxdiv.generate.config import GenerateJob, OpenAIBackendConfig
from jaxdiv.generate.runner import run_generate_job
from jaxdiv.generate.sampler import GenerationError, Request, SamplingParams
from jaxdiv.generate.server import ChatHandler, make_server

ROOT = Path(__file__).resolve().parents[2]


def _chunks(workdir: Path) -> list[Path]:
    return sorted((workdir / "rows").glob("chunk-*.jsonl"))


def test_killed_generate_resumes_without_duplicates_or_gaps(tmp_path):
    workdir = tmp_path / "pool"
    command = [sys.executable, "-m", "jaxdiv", "generate", "--task", "trec", "--recipe", "temperature",
               "--level", "3", "--n", "12", "--workdir", str(workdir), "--no-progress",
               "--set", "chunk_rows=4", "--set", "jax.batch_buckets=(4,)", "--set",
               "jax.prompt_buckets=(256,)", "--set", "jax.decode_chunk=8",
               "--set", "sampling.max_new_tokens=32"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 400
    while not _chunks(workdir) and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, first.stdout.read().decode()[-2000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {json.loads(line)["row"]: line for chunk in _chunks(workdir) for line in chunk.read_text().splitlines()}
    assert 4 <= len(before) < 12
    assert (workdir / "config.json").is_file() and (workdir / "pool.json").is_file()

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [json.loads(line) for chunk in _chunks(workdir) for line in chunk.read_text().splitlines()]
    assert sorted(r["row"] for r in rows) == list(range(12))  # none missing, none twice
    after = {r["row"]: json.dumps(r, ensure_ascii=False) for r in rows}
    for row, line in before.items():  # rows written before the kill are untouched
        assert json.loads(after[row]) == json.loads(line)
    pool = Pool.open(workdir)
    assert pool.counts()["rows"] == 12 and "pool" in done.stdout
    assert all(r["sampling"]["temperature"] == 0.7 for r in rows)  # D3 of the temperature axis


@pytest.fixture(scope="module")
def jax_backend(smollm2_generator):
    return JaxBackend(smollm2_generator, "jax:smollm2-135m-instruct", "test")


class FaultyHandler(ChatHandler):
    """The real handler behind a scripted series of failures, and an API-key check."""

    faults: list[str] = []
    seen_keys: list[str] = []

    def do_POST(self):
        self.seen_keys.append(self.headers.get("Authorization", ""))
        fault = self.faults.pop(0) if self.faults else ""
        if fault in ("429", "500", "503"):
            self.read_body()
            self.send_json(int(fault), {"error": {"message": "injected"}})
        elif fault == "malformed":
            self.read_body()
            data = b'{"choices": [ {"message": '
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif fault == "no-choices":
            self.read_body()
            self.send_json(200, {"object": "chat.completion", "choices": []})
        elif fault == "slow":
            time.sleep(SLOW_S)
            super().do_POST()
        else:
            super().do_POST()


@pytest.fixture(scope="module")
def server(jax_backend):
    httpd = make_server(jax_backend, handler=FaultyHandler, max_batch=8)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def _openai(server, **kw):
    cfg = dict(base_url=server, model="smollm2", api_key_env="JAXDIV_TEST_KEY", concurrency=4,
               timeout_s=120.0, max_retries=5, backoff_s=0.01, backoff_max_s=0.05)
    return OpenAIBackend(OpenAIBackendConfig(**(cfg | kw)))


SLOW_S = 8.0
PROMPT = ({"role": "user", "content": "Write one question about the ocean."},)
SAMPLING = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=24, stop=("\n",))


def test_openai_backend_retries_faults_and_matches_the_generator(server, jax_backend, monkeypatch):
    monkeypatch.setenv("JAXDIV_TEST_KEY", "sk-secret-test-key")
    requests = [Request(row_id=seed, messages=PROMPT, sampling=SAMPLING, seed=seed) for seed in (11, 12, 13)]
    direct = jax_backend.complete(requests)
    FaultyHandler.faults[:] = ["429", "500", "malformed", "no-choices", "503"]
    FaultyHandler.seen_keys.clear()
    backend = _openai(server)
    got = backend.complete(requests)
    assert [c.text for c in got] == [c.text for c in direct]  # seeds reproduce through the server
    assert all(c.completion_tokens > 0 and c.prompt_tokens > 0 for c in got)
    assert backend.retries == 5 and not FaultyHandler.faults
    assert set(FaultyHandler.seen_keys) == {"Bearer sk-secret-test-key"}

    FaultyHandler.faults[:] = ["500"] * 3  # out of retries: a failed completion, not an abort
    (failed,) = _openai(server, max_retries=2).complete(requests[:1])
    assert failed.finish_reason == "error" and "failed after 3 attempts: HTTP 500" in failed.error
    # slow replies: a timeout, then a retry that gets through (a 2-token reply is quick)
    quick = [Request(row_id=5, messages=PROMPT, sampling=SamplingParams(temperature=0.0, max_new_tokens=2))]
    expected = jax_backend.complete(quick)[0].text  # compiles this shape before the timed calls
    FaultyHandler.faults[:] = ["slow"]
    backend = _openai(server, timeout_s=SLOW_S - 2)
    assert backend.complete(quick)[0].text == expected
    assert backend.retries == 1
    FaultyHandler.faults[:] = ["slow"] * 2
    (failed,) = _openai(server, max_retries=1, timeout_s=SLOW_S - 2).complete(quick)
    assert "failed after 2 attempts: timeout" in failed.error
    time.sleep(SLOW_S)  # let the slow handlers drain
    with pytest.raises(GenerationError, match="HTTP 404"):
        _openai(server.replace("/v1", "/nope")).complete(requests[:1])


@pytest.mark.slow
def test_pool_through_the_openai_backend_with_llm_topics(server, jax_backend, tmp_path, monkeypatch):
    """topics recipe end to end over HTTP: the LLM writes the topic list (cached, versioned),
    rows carry provenance, and the API key never reaches the pool directory."""
    monkeypatch.setenv("JAXDIV_TEST_KEY", "sk-secret-test-key")
    FaultyHandler.faults[:] = []
    cfg = apply_overrides(GenerateJob(), [
        "backend=openai", f"openai.base_url={server}", "openai.model=smollm2",
        "openai.api_key_env=JAXDIV_TEST_KEY", "openai.backoff_s=0.01", "openai.timeout_s=120",
        "recipe.name=topics", "recipe.level=1", f"recipe.topics_cache={tmp_path / 'topics'}",
        "n=8", "chunk_rows=8", "sampling.max_new_tokens=32", f"workdir={tmp_path / 'pool'}"])
    backend = _openai(server, timeout_s=120.0)
    pool = run_generate_job(cfg, backend=backend, progress=False)
    assert pool.counts()["rows"] == 8
    cached = list((tmp_path / "topics" / "trec").glob("*.json"))
    assert len(cached) == 1
    record = json.loads(cached[0].read_text())
    assert record["version"] == 3 and len(record["topics"]) >= 5
    topics = record["topics"][:5]
    assert json.loads((tmp_path / "pool" / "topics.json").read_text())["topics"] == topics
    rows = pool.rows()
    assert {r["topic"] for r in rows} <= set(topics)
    assert all(r["generator"] == backend.generator_id and r["attributes"]["topic_count"] == 5 for r in rows)
    saved = json.loads((tmp_path / "pool" / "config.json").read_text())
    assert saved["config"]["recipe"]["level"] == 1
    for path in (tmp_path / "pool").rglob("*"):
        if path.is_file():
            assert "sk-secret-test-key" not in path.read_text()
