"""The optional judge: callables, an OpenAI-compatible endpoint (on localhost), errors."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tgllava.errors import TgError
from tgllava.eval.errors import JudgeError
from tgllava.eval.judge import CallableJudge, HTTPJudge, JudgeCache, make_judge


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers.get("Authorization"), body))
            if self.path.endswith("/broken/chat/completions"):
                self.send_response(500)
                self.end_headers()
                return
            out = json.dumps({"choices": [{"message": {"role": "assistant", "content": "B"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def test_make_judge():
    assert make_judge(None) is None and make_judge("exact_matching") is None

    def my_judge(prompt):
        return "A"

    j = make_judge(my_judge)
    assert isinstance(j, CallableJudge) and j.name == "my_judge" and j.ask("q") == "A"
    assert make_judge(lambda p: "x").name == "custom"
    assert isinstance(make_judge("https://example.invalid/v1"), HTTPJudge)
    with pytest.raises(JudgeError):
        make_judge("gpt-4")
    with pytest.raises(JudgeError):
        make_judge(42)


def test_http_judge(server, monkeypatch):
    url, seen = server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    j = make_judge(url + "/v1", model="local-judge")
    assert j.url == url + "/v1/chat/completions" and j.name == "local-judge"
    assert j.ask("Which option?", temperature=0.5) == "B"
    path, auth, body = seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
    assert body["model"] == "local-judge" and body["temperature"] == 0.5
    assert body["messages"] == [{"role": "user", "content": "Which option?"}]


def test_http_judge_failure_is_a_clear_error(server):
    url, _ = server
    j = HTTPJudge(url + "/broken", retries=2, timeout=5, backoff=0)
    with pytest.raises(JudgeError, match="failed after 2 tries"):
        j.ask("q")
    assert issubclass(JudgeError, TgError)


def test_judge_errors_and_cache(tmp_path):
    def boom(prompt):
        raise RuntimeError("quota")

    with pytest.raises(JudgeError, match="quota"):
        make_judge(boom).ask("q")
    with pytest.raises(JudgeError, match="expected str"):
        make_judge(lambda p: 3).ask("q")
    calls = []
    j = make_judge(lambda p: calls.append(p) or "Yes")
    j.cache = JudgeCache(str(tmp_path / "c.jsonl"))
    assert j.ask("q1") == "Yes" and j.ask("q1") == "Yes" and len(calls) == 1
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write('{"key": "torn')
    j.cache = JudgeCache(str(tmp_path / "c.jsonl"))
    assert j.ask("q1") == "Yes" and len(calls) == 1
