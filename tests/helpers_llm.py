"""Test doubles for the LLM: a loopback OpenAI-compatible chat-completions server and a "model" that translates
the report fixtures' sentences.  Shared by tests/test_expand.py, tests/test_report_translate.py and
tests/test_reports.py (test modules do not import each other).

:class:`FakeLLM` is a test double standing for a remote LLM server (any OpenAI-compatible endpoint: a hosted
API, vLLM, llama.cpp server, ...): an ``http.server`` on 127.0.0.1, port 0, in a thread, that speaks the
OpenAI chat-completions wire format.  No test leaves the machine.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _echo(body: dict) -> str:
    """The default reply: the last message's content."""
    return str(body["messages"][-1]["content"])


class FakeLLM:
    """Stands for a remote LLM service: answers POST /v1/chat/completions like an OpenAI-compatible API.

    ``reply(body) -> str`` makes the assistant's reply from the request body (settable at any time);
    ``fail_next``: HTTP status codes to answer with, one per request, before succeeding; ``requests``: every
    request received (path and JSON body)."""

    def __init__(self, reply: Callable[[dict], str] = _echo) -> None:
        self.requests: list[dict] = []
        self.fail_next: list[int] = []  # HTTP status codes to answer with before succeeding
        self.reply = reply
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                fake.requests.append({"path": self.path, "body": body})
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                if fake.fail_next:
                    code = fake.fail_next.pop(0)
                    return self._send(code, {"error": {"message": "server error", "type": "server_error"}})
                content = fake.reply(body)
                message = {"role": "assistant", "content": content}
                return self._send(200, {
                    "id": f"chatcmpl-{len(fake.requests)}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                })

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy between the client and the loopback server."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


#: what the loopback "model" answers for the protected (placeholder) form of each fixture sentence
ZH = {
    "⟦T1⟧ ⟦T2⟧.": "⟦T1⟧⟦T2⟧。",
    "Small right ⟦T1⟧.": "少量右侧⟦T1⟧。",
    "Moderate ⟦T1⟧.": "中度⟦T1⟧。",
    "Patchy opacities in both lower ⟦T1⟧.": "双下⟦T1⟧见斑片状阴影。",
    "Left basilar ⟦T1⟧.": "左肺底⟦T1⟧。",
    "⟦T1⟧ is clear without ⟦T2⟧.": "⟦T1⟧清晰，未见⟦T2⟧。",
    "Left basilar opacity likely reflects ⟦T1⟧.": "左肺底阴影，考虑⟦T1⟧。",
    "The ⟦T1⟧ size is normal.": "⟦T1⟧大小正常。",
    "Mediastinal contours are unremarkable.": "纵隔轮廓未见异常。",
    "No ⟦T1⟧ or ⟦T2⟧ in the ⟦T3⟧.": "⟦T3⟧未见⟦T1⟧或⟦T2⟧。",
    "A 5 mm ⟦T1⟧ is seen in the ⟦T2⟧.": "⟦T2⟧见一5 mm⟦T1⟧。",
    "No focal ⟦T1⟧ is seen in the ⟦T2⟧.": "⟦T2⟧未见局灶性⟦T1⟧。",
    "⟦T1⟧ size is normal and there is no pericardial effusion.": "⟦T1⟧大小正常，未见心包积液。",
    "⟦T1⟧ and both main bronchi are open.": "⟦T1⟧及双侧主支气管通畅。",
    "Ground glass opacities are present in the ⟦T1⟧.": "⟦T1⟧见磨玻璃影。",
    "The ⟦T1⟧ is clear.": "⟦T1⟧清晰。",
    "The ⟦T1⟧ is mildly enlarged.": "⟦T1⟧轻度增大。",
    "No focal ⟦T1⟧.": "未见局灶性⟦T1⟧。",
    "No ⟦T1⟧ is observed.": "未见⟦T1⟧。",
}
EN = {
    "⟦T1⟧见一⟦T2⟧，直径约8mm。": "A ⟦T2⟧ about 8 mm across is seen in the ⟦T1⟧.",
    "⟦T1⟧未见明显⟦T2⟧。": "No obvious ⟦T2⟧ in the ⟦T1⟧.",
    "⟦T1⟧大小正常。": "The ⟦T1⟧ is of normal size.",
    "肝脏形态大小正常，密度均匀。": "The liver is normal in shape and size, with even density.",
    "脾脏不大。": "The spleen is not enlarged.",
}


def good_model(body: dict) -> str:
    """A correct translator of the fixtures' sentences (keeps every placeholder)."""
    text = body["messages"][-1]["content"]
    return ZH.get(text) or EN.get(text) or text
