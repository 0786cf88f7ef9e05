"""The model name `tgllava serve` answers with (issue 23 item 9): each answer, plain or streamed, carries
the name the client sent (the served name when it sends none); /v1/models and /health list the served
name: --served-model-name, else the checkpoint's folder (DIR for the DIR/llm of a demo checkpoint).
Runs the tiny demo checkpoint (tgllava.fixtures) with text-only requests, spoken to with the openai
client and http.client."""

import http.client
import json

import pytest

openai = pytest.importorskip("openai", reason="the server is spoken to with the openai client (pip install .[test])")
pytest.importorskip("uvicorn", reason="tgllava serve needs the 'serve' extra")

import tgllava
from tgllava import cli
from tgllava import serve as serve_mod
from tgllava.fixtures import build
from tgllava.serve import ServerThread

MESSAGES = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    llm, _, _ = build(str(tmp_path_factory.mktemp("served") / "my-demo"))
    return tgllava.load(llm, progress=False)


def client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=300)


def post(srv, body):
    c = http.client.HTTPConnection(srv.host, srv.port, timeout=300)
    try:
        c.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def test_default_name_is_the_checkpoint_folder(demo_model):
    with ServerThread(demo_model, max_batch=2) as srv:
        assert [m.id for m in client(srv).models.list().data] == ["my-demo"]
        status, body = post(srv, {"messages": MESSAGES, "max_tokens": 2})  # no model named
        assert status == 200 and body["model"] == "my-demo"


def test_answers_carry_the_name_the_client_sent(demo_model):
    with ServerThread(demo_model, max_batch=2, model_name="tg-demo") as srv:
        c = client(srv)
        assert [m.id for m in c.models.list().data] == ["tg-demo"]
        r = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=2)
        assert r.model == "gpt-4o-mini" and r.choices[0].message.content is not None
        chunks = list(c.chat.completions.create(model="llava-v1.5-7b", messages=MESSAGES, max_tokens=2, stream=True))
        assert chunks and {chunk.model for chunk in chunks} == {"llava-v1.5-7b"}
        assert post(srv, {"messages": MESSAGES, "max_tokens": 2})[1]["model"] == "tg-demo"
        status, body = post(srv, {"model": 7, "messages": MESSAGES})
        assert status == 400 and body["error"]["param"] == "model"
        status, body = post(srv, {"model": "x" * 1000, "messages": MESSAGES})
        assert status == 400 and "longer than" in body["error"]["message"]


def test_cli_passes_the_served_model_name(monkeypatch, demo_model):
    served = {}
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: demo_model)
    monkeypatch.setattr(serve_mod, "serve_model", lambda model, **kw: served.update(kw))
    assert cli.main(["serve", "--model", demo_model.llm_dir, "--served-model-name", "tg-demo"]) == 0
    assert served["model_name"] == "tg-demo"
    assert cli.main(["serve", "--model", demo_model.llm_dir]) == 0
    assert served["model_name"] is None  # build_app's default: the folder's name
