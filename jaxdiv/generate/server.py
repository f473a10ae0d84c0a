"""A minimal OpenAI-compatible chat-completions server over a local backend (standard library).

`POST /v1/chat/completions` with the usual body (model, messages, temperature, top_p,
max_tokens, stop, seed, and the top_k / min_p extensions). Concurrent requests are
micro-batched: a worker collects what arrives within `batch_window_s` and runs it as one
batch, so the JAX generator's batching pays off behind an HTTP front.
"""

from __future__ import annotations

import http.server
import json
import queue
import threading
import time
from concurrent.futures import Future

from jaxdiv.generate.sampler import Request, SamplingParams


class BatchingWorker:
    """Serialises calls into a backend, grouping those that arrive together."""

    def __init__(self, backend, max_batch: int = 32, batch_window_s: float = 0.01):
        self.backend, self.max_batch, self.window = backend, max_batch, batch_window_s
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, request: Request) -> Future:
        future: Future = Future()
        self.queue.put((request, future))
        return future

    def _loop(self) -> None:
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + self.window
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                completions = self.backend.complete([request for request, _ in batch])
                for (_, future), completion in zip(batch, completions):
                    future.set_result(completion)
            except Exception as err:  # hand any failure to the waiting HTTP threads
                for _, future in batch:
                    future.set_exception(err)


class ChatHandler(http.server.BaseHTTPRequestHandler):
    worker: BatchingWorker  # set on the subclass made by `make_server`
    model_name: str
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test and CLI output clean
        pass

    def send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout); nothing to answer

    def read_body(self) -> dict:
        length = int(self.headers.get("Content-Length", 0))
        return json.loads(self.rfile.read(length) or b"{}")

    def do_POST(self) -> None:
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self.send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = self.read_body()
            stop = body.get("stop") or ()
            sampling = SamplingParams(
                temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                top_k=int(body.get("top_k", 0)), min_p=float(body.get("min_p", 0.0)),
                max_new_tokens=int(body.get("max_tokens", 64)),
                stop=(stop,) if isinstance(stop, str) else tuple(stop))
            seed = int(body.get("seed", 0))
            request = Request(row_id=seed, messages=tuple(body["messages"]), sampling=sampling, seed=seed)
        except (ValueError, KeyError, TypeError) as err:
            self.send_json(400, {"error": {"message": f"bad request: {err}"}})
            return
        try:
            completion = self.worker.submit(request).result()
        except Exception as err:
            self.send_json(500, {"error": {"message": str(err)}})
            return
        self.send_json(200, {
            "id": f"chatcmpl-{seed}", "object": "chat.completion", "model": self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                         "finish_reason": "length" if completion.finish_reason == "length" else "stop"}],
            "usage": {"prompt_tokens": completion.prompt_tokens,
                      "completion_tokens": completion.completion_tokens,
                      "total_tokens": completion.prompt_tokens + completion.completion_tokens}})


def make_server(backend, host: str = "127.0.0.1", port: int = 0, model_name: str = "jaxdiv",
                handler: type[ChatHandler] = ChatHandler, max_batch: int = 32
                ) -> http.server.ThreadingHTTPServer:
    """A threaded server (not yet serving: call serve_forever). Port 0 picks a free port."""
    bound = type("BoundChatHandler", (handler,), {"worker": BatchingWorker(backend, max_batch),
                                                   "model_name": model_name})
    return http.server.ThreadingHTTPServer((host, port), bound)
