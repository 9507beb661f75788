"""The HTTP side of :class:`~skllmprob.testing.openai_stub.OpenAIStub`: the threaded
server and the request handler (routes, request checks, scripted faults)."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from . import decisions_stub, stub_vllm
from .stub_answers import answer, empty_answer
from .stub_faults import CODES, FAULT_KINDS, MESSAGES, Fault
from .stub_faults import error_body as _error_body

if TYPE_CHECKING:
    from .openai_stub import OpenAIStub

__all__ = ["Handler", "Server"]


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 512
    allow_reuse_address = True
    stub: OpenAIStub

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (timed out, or was killed) is part of the tests.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        return

    # -- plumbing --------------------------------------------------------------------

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if getattr(self, "_uncounted", False):
            # Counted before the answer leaves: a client that has its answer sees it.
            self._uncounted = False
            with self.server.stub._lock:
                self.server.stub.status_counts[status] += 1
                entry = getattr(self, "_entry", None)
                if entry is not None:
                    entry["status"] = status
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up
            self.close_connection = True

    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _presented_key(self) -> tuple[str | None, str | None]:
        auth = self.headers.get("Authorization")
        if auth and auth.lower().startswith("bearer "):
            return auth[7:].strip(), "bearer"
        key = self.headers.get("api-key")
        if key:
            return key.strip(), "api-key"
        return None, None

    # -- routes ----------------------------------------------------------------------

    def do_GET(self) -> None:
        stub = self.server.stub
        path = self.path.split("?", 1)[0]
        if path == "/_stub/stats":
            self._send(200, stub.stats())
        elif path.endswith("/models"):
            name = stub.model or "stub-model"
            self._send(
                200,
                {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "stub"}]},
            )
        else:
            self._send(404, _error_body(f"no route {path}", "not_found"))

    def do_POST(self) -> None:
        stub = self.server.stub
        raw = self._read_body()
        path = self.path.split("?", 1)[0]
        if path == "/_stub/reset":
            stub.reset()
            self._send(200, {"ok": True})
            return
        if path in ("/tokenize", "/detokenize") and stub.tokenizer is not None:
            self._tokenize(stub, path, raw)
            return
        if path.endswith("/v1/decisions"):
            endpoint = "decisions"
        elif path.endswith("/chat/completions"):
            endpoint = "chat"
        elif path.endswith("/completions"):
            endpoint = "completions"
        else:
            self._send(404, _error_body(f"no route {path}", "not_found"))
            return
        with stub._lock:
            stub.requests += 1
            stub.in_flight += 1
            stub.peak_in_flight = max(stub.peak_in_flight, stub.in_flight)
        self._uncounted = True
        try:
            self._complete(stub, endpoint, path, raw)
        finally:
            with stub._lock:
                stub.in_flight -= 1
                if self._uncounted:  # no answer was sent (a hang or a dropped connection)
                    stub.status_counts[0] += 1
            self._uncounted = False
            self._entry = None

    def _tokenize(self, stub: OpenAIStub, path: str, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._send(400, _error_body("We could not parse the JSON body.", "invalid_request"))
            return
        with stub._lock:
            stub.tokenize_requests += 1
        self._send(*stub.tokenizer.answer(path, body))

    def _complete(self, stub: OpenAIStub, endpoint: str, path: str, raw: bytes) -> int:
        key, auth = self._presented_key()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            self._send(400, _error_body("We could not parse the JSON body.", "invalid_request"))
            return 400
        if endpoint == "decisions":
            prompt = text = decisions_stub.decision_text(body)
            k = None
        elif endpoint == "chat":
            messages = body.get("messages") or []
            contents = [m.get("content") for m in messages if isinstance(m, dict)]
            contents = [c for c in contents if isinstance(c, str)]
            users = [
                m.get("content")
                for m in messages
                if isinstance(m, dict) and m.get("role") == "user"
            ]
            prompt = users[-1] if users and isinstance(users[-1], str) else ""
            text = "\n\n".join(contents)
            k = int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
        else:
            prompt = body.get("prompt")
            as_text = stub_vllm.prompt_text(stub, prompt)
            prompt = as_text if as_text is not None else prompt
            prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
            text = prompt
            k = body.get("logprobs")
            k = int(k) if isinstance(k, int | float) and not isinstance(k, bool) else None
        entry = {"path": self.path, "body": body, "auth": auth, "time": time.monotonic()}
        with stub._lock:
            stub.prompt_requests[prompt] += 1
            stub.log.append(entry)
            fault = stub._pick_fault(prompt)
        self._entry = entry  # its status is set by _send, before the answer leaves

        status = self._check(stub, body, endpoint, key, k)
        if status:
            entry["status"] = status
            return status
        if fault is not None:
            status = self._fault(stub, fault, endpoint, body, key, text)
            if status is not None:
                entry["status"] = status
                return status
        if stub.latency > 0 and stub._stopping.wait(stub.latency):
            return 0
        if endpoint == "decisions":
            cached = self._decision_cached(stub, body)
            payload = decisions_stub.decision_answer(stub, body, text, cached, refuse=False)
        else:
            payload = answer(stub, endpoint, body, text, k)
            if stub.tokenizer is not None:
                payload = stub_vllm.apply(stub, endpoint, body, text, payload)
        with stub._lock:  # counted before the answer leaves (no race with the client)
            stub.prompt_successes[prompt] += 1
        self._send(200, payload)
        return 200

    def _check(self, stub: OpenAIStub, body: dict, endpoint: str, key, k) -> int:
        if stub.api_key is not None and key != stub.api_key:
            self._send(401, _error_body("Incorrect API key provided.", "invalid_request_error"))
            return 401
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self._send(400, _error_body("you must provide a model parameter", "invalid_request"))
            return 400
        if stub.model is not None and model != stub.model:
            self._send(
                404,
                _error_body(
                    f"The model `{model}` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    code="model_not_found",
                ),
            )
            return 404
        message = stub_vllm.problem(stub, body, endpoint)
        if message is not None:
            self._send(400, _error_body(message, "BadRequestError", None, None))
            return 400
        problem = self._decision_problem(stub, body, endpoint)
        if problem is not None:
            status, message, param = problem
            self._send(status, _error_body(message, "invalid_request_error", None, param))
            return status
        if (
            endpoint == "chat"
            and body.get("top_logprobs") is not None
            and not body.get("logprobs")
        ):
            self._send(
                400,
                _error_body(
                    "logprobs must be set to true if top_logprobs is used.",
                    "invalid_request_error",
                    param="top_logprobs",
                ),
            )
            return 400
        cap = stub.max_top_logprobs
        if cap is not None and k is not None and k > cap:
            name = "top_logprobs" if endpoint == "chat" else "logprobs"
            self._send(
                400,
                _error_body(
                    f"Invalid '{name}': integer above maximum value. Expected a value <= "
                    f"{cap}, but got {k} instead.",
                    "invalid_request_error",
                    code="integer_above_max_value",
                    param=name,
                ),
            )
            return 400
        return 0

    @staticmethod
    def _decision_problem(stub: OpenAIStub, body: dict, endpoint: str):
        if endpoint == "decisions":
            return decisions_stub.decision_problem(body, stub.decision_models)
        message = decisions_stub.chat_problem(body, stub.decision_models)
        return None if message is None else (400, message, "model")

    @staticmethod
    def _decision_cached(stub: OpenAIStub, body: dict) -> int:
        key = body.get("prompt_cache_key")
        if not isinstance(key, str):
            return 0
        with stub._lock:
            seen = key in stub._seen_prefixes
            stub._seen_prefixes.add(key)
        return len(json.dumps(body.get("questions")).split()) if seen else 0

    def _fault(self, stub: OpenAIStub, fault: Fault, endpoint: str, body: dict, key, text):
        kind = fault.kind
        status = FAULT_KINDS[kind]
        if endpoint == "decisions" and kind in ("refusal", "empty", "no_logprobs"):
            payload = decisions_stub.decision_answer(stub, body, text, 0, refuse=True)
            if kind != "refusal":
                payload["answers"] = []
            self._send(200, payload)
            return 200
        if kind == "refusal":
            return None  # only the decisions endpoint refuses
        if kind == "hang":
            if stub._stopping.wait(fault.hang):
                return 0
            return None  # then answer normally (the client has most likely left)
        if kind == "disconnect":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return 0
        if kind == "malformed":
            self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
            return 200
        if kind == "no_logprobs":
            payload = answer(stub, endpoint, {**body, "logprobs": None}, text, None)
            payload["choices"][0]["logprobs"] = None
            self._send(200, payload)
            return 200
        if kind == "empty":
            self._send(200, empty_answer(endpoint, body))
            return 200
        message, etype = MESSAGES[kind]
        if fault.message is not None:
            message = fault.message.replace("{key}", key or "")
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        param = "logprobs" if kind == "logprobs_forbidden" else None
        self._send(status, _error_body(message, etype, CODES.get(kind), param), headers)
        return status
