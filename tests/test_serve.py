"""Tests of continuous batching (_C.Scheduler) and `tgllava serve` (tgllava.serve) on golden checkpoints.

The server runs on 127.0.0.1 inside the test process (tgllava.serve.ServerThread) and is spoken to
with the real `openai` client (and http.client for raw requests).  Greedy answers must equal Model.chat's,
plain and streamed; 16 concurrent clients with different pictures, questions and lengths must each
get exactly their single-run answer.  The single-run references of the concurrency test come from
Model.generate_batch one request at a time with the picture's cached vision-tower output (the same
numbers as from pixels on the CPU; test_scheduler_matches_generate and the Model.chat comparisons
check the whole path), so the slow vision tower runs once per picture.  Bad requests get OpenAI
error bodies with 400/401/404/405/413/503/500; a client that disconnects frees its slot; --api-key
is enforced; `tgllava serve` starts from the command line.  Hostile and careless clients: a huge
prompt is refused before it is tokenized, JSON is parsed off the event loop (deep nesting is a
400) and dropped once parsed, a full server refuses before decoding a picture, decodes share a
memory budget, an empty key is refused at start-up, cross-site requests (foreign Host, browser
Origin, non-JSON Content-Type) are refused, idle and slow connections are closed, connections are
limited, and every request gets one access-log line.
"""

import asyncio
import base64
import gc
import http.client
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import weakref

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="test_serve speaks with the openai client (pip install .[test])")
from _frontend_golden import QUESTION, cached_chat, golden_model, golden_set, second_image, subprocess_env

from tgllava import _C, chat, generation, tokenize
from tgllava import image as image_mod
from tgllava.errors import ShapeError
from tgllava.serve import ServerThread, build_app
from tgllava.serve import app as app_mod

L15, TGV = "llava15-tiny", "tg-vicuna-tiny"
CONTEXT = 1024


def data_url(path):
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def user(question, image=None):
    parts = [{"type": "text", "text": question}]
    if image is not None:
        parts.append({"type": "image_url", "image_url": {"url": data_url(image)}})
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def server():
    srv = ServerThread(golden_model(L15), max_batch=4, max_queue=64, context=CONTEXT)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def small_server():
    """One slot, no waiting line, an API key and small limits."""
    srv = ServerThread(golden_model(L15), max_batch=1, max_queue=0, context=CONTEXT, api_key="sesame",
                       max_body_bytes=400_000, max_image_pixels=1_000_000, allow_local_files=True)
    yield srv
    srv.stop()


def client(srv, key="none"):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=600)


# ---- the C scheduler ---------------------------------------------------------------

_features = {}


def _request(model, image, question, use_dp=True):
    """chat's request dict for (image, question), with the picture's cached vision-tower output."""
    req = chat.prepare(model, image, question, use_dp=use_dp)
    key = (id(model), image, use_dp)
    if key not in _features:
        _features[key] = model.cacheable_features(req["pixels"], use_dp=use_dp)
    req["features"] = _features[key]
    return req


def _eos(model):
    return list(chat.tokenizers(model)[0].eos_ids) or None


def test_scheduler_matches_generate():
    m = golden_model(L15)
    img, img2 = golden_set(L15)[2], second_image(L15)
    pairs = [(img, QUESTION), (img2, "Describe it."), (img, "What colour is it?"), (img2, QUESTION)] * 2
    lengths = [9, 2, 14, 5, 0, 11, 3, 7]
    reqs = [_request(m, im, q) for im, q in pairs]
    want = [m.generate_batch([r], max_new_tokens=n, eos_token_id=_eos(m)) [0] for r, n in zip(reqs, lengths)]
    want[0] = m.generate_batch([dict(reqs[0], features=None)], max_new_tokens=9, eos_token_id=_eos(m))[0]
    s = _C.Scheduler(m._core._core, 3, CONTEXT, 8)
    assert (s.slots, s.context, s.active) == (3, CONTEXT, 0)
    got, ids, todo, cancelled = {}, {}, list(range(len(reqs))), None
    while todo or s.active:
        while todo and s.active < s.slots:
            i = todo.pop(0)
            r = reqs[i]
            seq = m._sequence(r["input_ids"], r["pixels"], features=None if i == 0 else r["features"])
            ids[s.admit(seq, max_new_tokens=lengths[i], eos_ids=_eos(m))] = i
            got[i] = []
        if s.active == s.slots:
            with pytest.raises(ShapeError, match="no free slot"):
                s.admit(m._sequence(reqs[1]["input_ids"], reqs[1]["pixels"], features=reqs[1]["features"]))
        for sid, token, finish in s.step():
            i = ids[sid]
            if token >= 0:
                got[i].append(token)
            if finish:
                assert finish == 2 and len(got[i]) == lengths[i]
            if i == 5 and len(got[i]) == 4 and cancelled is None:  # cancel mid-way: the slot is free at once
                before = s.active
                assert s.cancel(sid) is True and s.active == before - 1
                assert s.cancel(sid) is False
                cancelled = sid
    for i in range(len(reqs)):
        assert got[i] == (want[i][:4] if i == 5 else want[i]), i
    s.close()


def test_scheduler_refuses_bad_input():
    m = golden_model(L15)
    r = _request(m, golden_set(L15)[2], QUESTION)
    seq = m._sequence(r["input_ids"], r["pixels"], features=r["features"])
    s = _C.Scheduler(m._core._core, 1, 700, 0)
    with pytest.raises(ShapeError, match="do not fit"):
        s.admit(seq, max_new_tokens=200)
    for bad in (dict(temperature=-1.0), dict(top_p=0.0), dict(temperature=float("nan")), dict(max_new_tokens=-1)):
        with pytest.raises(ShapeError):
            s.admit(seq, **bad)
    with pytest.raises(ShapeError):
        s.admit({"ids": np.array([5, 10_000], np.int32)})
    assert s.active == 0
    s.close()
    with pytest.raises(Exception, match="closed"):
        s.step()
    with pytest.raises(ShapeError):
        _C.Scheduler(m._core._core, 0)


# ---- the server answers as Model.chat ------------------------------------------------

def test_chat_completion_equals_model_chat(server):
    img = golden_set(L15)[2]
    ref = cached_chat(L15, img, QUESTION, max_new_tokens=12)
    r = client(server).chat.completions.create(model="x", messages=user(QUESTION, img), max_tokens=12,
                                               temperature=0)
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    m = golden_model(L15)
    n_prompt = len(chat.prepare(m, img, QUESTION)["input_ids"]) - 1 + \
        m.visual_token_count()
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, len(ref.token_ids))
    assert r.usage.total_tokens == n_prompt + len(ref.token_ids)


def test_streaming_equals_model_chat(server):
    img = golden_set(L15)[2]
    ref = cached_chat(L15, img, QUESTION, max_new_tokens=12)
    stream = client(server).chat.completions.create(model="x", messages=user(QUESTION, img), max_tokens=12,
                                                    stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == ref.text
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length" if ref.finish_reason == "length" else "stop"]
    assert chunks[-1].usage.completion_tokens == len(ref.token_ids)
    streamed = list(chat.chat(golden_model(L15), img, QUESTION, max_new_tokens=12, stream=True))
    assert "".join(streamed) == "".join(pieces)


def test_tg_model_with_switches_equals_model_chat():
    m = golden_model(TGV)
    img = golden_set(TGV)[2]
    ref = cached_chat(TGV, img, QUESTION, max_new_tokens=6, use_dp=False)
    with ServerThread(m, max_batch=2, context=CONTEXT) as srv:
        r = client(srv).chat.completions.create(model="x", messages=user(QUESTION, img), max_tokens=6,
                                                extra_body={"use_dp": False})
    assert r.choices[0].message.content == ref.text
    assert r.usage.completion_tokens == len(ref.token_ids)


def _reference(image, question, max_tokens, stop=None):
    """(text, n tokens) of one request run alone, chat's answer rules."""
    m = golden_model(L15)
    req = _request(m, image, question)
    tok = chat.tokenizers(m)[0]
    stops = [s for s in ["</s>"] + ([stop] if stop else []) if s]
    tracker = generation.StopTracker(tok, stops)
    tokens = m.generate_batch([req], max_new_tokens=max_tokens, eos_token_id=_eos(m),
                              callback=lambda seq, t: tracker.push(t))[0]
    return generation.final_text(tok.decode(tokens), stops), len(tokens)


def test_sixteen_concurrent_clients_get_their_single_answers(server):
    img, img2 = golden_set(L15)[2], second_image(L15)
    questions = [QUESTION, "Describe the picture.", "What colour is the sky?", "Count the objects."]
    cases = [((img, img2)[i % 2], questions[(i // 2) % 4], 3 + (7 * i) % 17) for i in range(16)]
    assert chat.conversation.stop_strings(chat.default_conv_mode(golden_model(L15))) == ["</s>"]
    refs = [_reference(*c) for c in cases]
    results, errors = [None] * 16, []
    start = threading.Barrier(16)

    def one(i):
        image, question, n = cases[i]
        try:
            start.wait()
            if i % 3 == 0:  # some stream, some do not
                chunks = list(client(server).chat.completions.create(
                    model="x", messages=user(question, image), max_tokens=n, stream=True,
                    stream_options={"include_usage": True}))
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                results[i] = (text, chunks[-1].usage.completion_tokens)
            else:
                r = client(server).chat.completions.create(model="x", messages=user(question, image), max_tokens=n)
                results[i] = (r.choices[0].message.content, r.usage.completion_tokens)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((i, e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(16):
        assert results[i] == refs[i], (i, cases[i])
    assert server.engine.running == 0 and server.engine.waiting == 0


def test_stop_parameter_cuts_the_answer(server):
    img = golden_set(L15)[2]
    full, _ = _reference(img, QUESTION, 12)
    stop = full[3:5] if len(full) > 5 else full[-1:]
    want, n = _reference(img, QUESTION, 12, stop=stop)
    r = client(server).chat.completions.create(model="x", messages=user(QUESTION, img), max_tokens=12, stop=[stop])
    assert r.choices[0].message.content == want and stop not in want
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == n


# ---- endpoints, errors, limits -------------------------------------------------------

def test_models_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["llava15-tiny"]  # the checkpoint's folder, holding llm/
    status, h = _request_raw(server, "GET", "/health")
    assert status == 200 and h["status"] == "ok" and h["slots"] == 4


def _conn(srv, timeout=600):
    return http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)


def _request_raw(srv, method, path, body=None, key=None, timeout=600, headers=None):
    """(status, parsed JSON) of one raw request; body bytes are sent as they are, other bodies as JSON;
    `headers` add to (or replace; None: leave out) Content-Type: application/json."""
    headers = {k: v for k, v in {"Content-Type": "application/json", **(headers or {})}.items() if v is not None}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    c = _conn(srv, timeout)
    try:
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def _post(srv, body=None, key=None):
    return _request_raw(srv, "POST", "/v1/chat/completions", body, key)


BAD = [
    ({"model": "x"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 10 ** 6}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": [1]}, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "use_dp": 3}, "use_dp"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "https://example.com/a.png"}}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "data:image/png;base64,@@@"}}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"not a picture").decode()}}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/hostname"}}]}]},
     "messages"),
    ({"messages": [{"role": "user", "content": "two <image> slots without a picture"}]}, "messages"),
]


@pytest.mark.parametrize("body,param", BAD)
def test_bad_requests_get_400(server, body, param):
    status, err = _post(server, body)
    assert status == 400, err
    assert err["error"]["type"] == "invalid_request_error" and err["error"]["message"]
    assert err["error"]["param"] == param


def test_sampling_values_follow_the_models_rule(server):
    """Serve checks sampling values with model.check_sampling: a temperature above OpenAI's documented 2
    is the model's to take, a top_p of 1.5 is refused with the model's message."""
    status, _ = _post(server, {"messages": user("hi"), "max_tokens": 1, "temperature": 2.5})
    assert status == 200
    status, err = _post(server, {"messages": user("hi"), "max_tokens": 1, "top_p": 1.5})
    assert status == 400 and err["error"]["param"] == "top_p" and "top_p must be in (0, 1]" in err["error"]["message"]


def test_malformed_json_and_routes(server):
    status, err = _post(server, b"{not json")
    assert status == 400 and "JSON" in err["error"]["message"]
    status, err = _request_raw(server, "GET", "/v1/nothing")
    assert status == 404 and err["error"]["message"]
    status, err = _request_raw(server, "GET", "/v1/chat/completions")
    assert status == 405 and err["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="n = 1"):
        client(server).chat.completions.create(model="x", messages=user("hi"), n=2)


def test_api_key_is_enforced(small_server):
    for key in ("none", "sesame2", "sesam"):
        with pytest.raises(openai.AuthenticationError):
            client(small_server, key).models.list()
        with pytest.raises(openai.AuthenticationError):
            client(small_server, key).chat.completions.create(model="x", messages=user("hi"), max_tokens=1)
    assert _post(small_server, {"messages": []})[0] == 401
    assert [m.id for m in client(small_server, "sesame").models.list().data] == ["llava15-tiny"]
    assert _request_raw(small_server, "GET", "/health")[0] == 200  # health needs no key


def _png(w, h):
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def test_too_large_gets_413(small_server):
    big = "data:image/png;base64," + base64.b64encode(os.urandom(500_000)).decode()
    status, err = _post(small_server, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": big}}]}]}, key="sesame")
    assert status == 413 and err["error"]["message"]
    huge = "data:image/png;base64," + base64.b64encode(_png(1200, 1000)).decode()  # 1.2 MP > the 1 MP limit
    status, err = _post(small_server, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": huge}}]}]}, key="sesame")
    assert status == 413 and "pixels" in err["error"]["message"]


def test_local_files_only_when_allowed(small_server, tmp_path):
    img = golden_set(L15)[2]
    ref = cached_chat(L15, img, QUESTION, max_new_tokens=3)
    msgs = [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                         {"type": "image_url", "image_url": {"url": "file://" + img}}]}]
    r = client(small_server, "sesame").chat.completions.create(model="x", messages=msgs, max_tokens=3)
    assert r.choices[0].message.content == ref.text
    msgs[0]["content"][1]["image_url"]["url"] = str(tmp_path / "missing.png")
    with pytest.raises(openai.BadRequestError, match="does not exist"):
        client(small_server, "sesame").chat.completions.create(model="x", messages=msgs, max_tokens=3)


def _hang_up_frees_the_slot(conn, eng):
    """Close the client's connection mid-answer: the slot is freed long before the 300 tokens are done."""
    steps = eng.steps
    conn.sock.shutdown(2)
    conn.close()
    deadline = time.monotonic() + 60
    while eng.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert eng.running == 0 and eng.steps - steps < 250


def test_full_queue_503_before_decoding_and_disconnect_frees_the_slot(small_server):
    eng = small_server.engine
    img = golden_set(L15)[2]
    body = json.dumps({"messages": user(QUESTION, img), "max_tokens": 300, "stream": True}).encode()
    c = _conn(small_server)
    c.request("POST", "/v1/chat/completions", body=body,
              headers={"Authorization": "Bearer sesame", "Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200
    assert r.readline().startswith(b"data: ")  # admitted and running: the one slot is taken
    assert eng.running == 1
    status, err = _post(small_server, {"messages": user("hi"), "max_tokens": 2}, key="sesame")
    assert status == 503 and err["error"]["type"] == "server_overloaded"
    not_png = "data:image/png;base64," + base64.b64encode(b"not a picture").decode()
    status, err = _post(small_server, {"messages": [{"role": "user", "content": [  # refused before decoding
        {"type": "image_url", "image_url": {"url": not_png}}]}]}, key="sesame")
    assert status == 503 and err["error"]["code"] == "queue_full", err
    _hang_up_frees_the_slot(c, eng)
    r = client(small_server, "sesame").chat.completions.create(model="x", messages=user("hi"), max_tokens=2)
    assert r.choices[0].message.content is not None


def test_non_streaming_disconnect_cancels(small_server):
    eng = small_server.engine
    img = golden_set(L15)[2]
    body = {"messages": user(QUESTION, img), "max_tokens": 300}
    c = _conn(small_server)
    c.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
              headers={"Authorization": "Bearer sesame", "Content-Type": "application/json"})
    deadline = time.monotonic() + 120
    while not eng.running and time.monotonic() < deadline:  # wait until it runs, then hang up
        time.sleep(0.01)
    assert eng.running == 1, "the request never started"
    _hang_up_frees_the_slot(c, eng)


def test_internal_error_gets_500(small_server, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("vision tower exploded")

    monkeypatch.setattr(small_server.engine.driver.feature_cache, "lookup", boom)
    status, err = _post(small_server, {"messages": user(QUESTION, golden_set(L15)[2]), "max_tokens": 2},
                        key="sesame")
    assert status == 500 and "exploded" in err["error"]["message"] and err["error"]["type"] == "server_error"


# ---- hostile and careless clients ---------------------------------------------------

def test_huge_prompt_is_refused_before_tokenizing(server, monkeypatch):
    calls = []
    tokenize_prompt = tokenize.tokenizer_image_token
    monkeypatch.setattr(tokenize, "tokenizer_image_token", lambda *a, **k: calls.append(1) or tokenize_prompt(*a, **k))
    text = "many words " * 100_000  # 1.1 MB: far more than 1024 positions can hold
    assert len(text) > server.engine.max_prompt_chars
    status, err = _post(server, {"messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": text}]})
    assert status == 400 and err["error"]["code"] == "context_length_exceeded", err
    assert calls == []
    status, _ = _post(server, {"messages": user("hi"), "max_tokens": 1})  # a prompt that fits is tokenized
    assert status == 200 and calls == [1]


def test_cpu_work_runs_off_the_event_loop(server, monkeypatch):
    """JSON parsing, tokenizing and picture decoding run on worker threads, never on the event loop's
    (the ServerThread's "tgllava-serve"), where they would stall every other client."""
    threads = []

    def on_thread(name, f):
        def run(*a, **k):
            threads.append((name, threading.current_thread().name))
            return f(*a, **k)
        return run

    monkeypatch.setattr(app_mod, "json", types.SimpleNamespace(loads=on_thread("json", json.loads), dumps=json.dumps))
    monkeypatch.setattr(tokenize, "tokenizer_image_token", on_thread("tokenize", tokenize.tokenizer_image_token))
    monkeypatch.setattr(image_mod, "preprocess", on_thread("decode", image_mod.preprocess))
    status, _ = _post(server, {"messages": user(QUESTION, golden_set(L15)[2]), "max_tokens": 1})
    assert status == 200
    assert sorted(name for name, _ in threads) == ["decode", "json", "tokenize"]
    assert all(thread != "tgllava-serve" for _, thread in threads), threads


def test_deeply_nested_json_is_400(server):
    status, err = _post(server, b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "nested too deeply" in err["error"]["message"], err
    assert err["error"]["type"] == "invalid_request_error"


def test_body_is_dropped_once_parsed(server, monkeypatch):
    """While the answer runs, the parsed request (its base64 picture included) is no longer held."""
    class Body(dict):  # a dict that weak references can follow
        pass

    bodies = []

    def loads(raw):
        body = Body(json.loads(raw))
        bodies.append(weakref.ref(body))
        return body

    monkeypatch.setattr(app_mod, "json", types.SimpleNamespace(loads=loads, dumps=json.dumps))
    eng = server.engine
    c = _conn(server)
    c.request("POST", "/v1/chat/completions", body=json.dumps({"messages": user(QUESTION, golden_set(L15)[2]),
                                                                "max_tokens": 300}).encode(),
              headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + 120
    while not eng.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert eng.running == 1 and len(bodies) == 1
    gc.collect()
    assert bodies[0]() is None
    _hang_up_frees_the_slot(c, eng)


@pytest.mark.slow
def test_picture_decodes_share_a_memory_budget(monkeypatch):
    """With a budget smaller than one picture, pictures are decoded one at a time."""
    running, most = [0], [0]
    lock = threading.Lock()
    preprocess = image_mod.preprocess

    def slow_preprocess(*a, **k):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(1.0)  # long enough for the other requests to arrive
            return preprocess(*a, **k)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(image_mod, "preprocess", slow_preprocess)
    statuses = []
    with ServerThread(golden_model(L15), max_batch=4, context=CONTEXT, max_decode_bytes=1) as srv:
        body = {"messages": user(QUESTION, golden_set(L15)[2]), "max_tokens": 1}
        threads = [threading.Thread(target=lambda: statuses.append(_post(srv, body)[0])) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses == [200] * 4 and most[0] == 1


def test_empty_api_key_is_refused():
    with pytest.raises(ValueError, match="empty"):
        ServerThread(golden_model(L15), api_key="")
    with pytest.raises(ValueError, match="empty"):
        ServerThread(golden_model(L15), api_key="  ")


def test_cross_site_requests_are_refused(server):
    hi = {"messages": user("hi"), "max_tokens": 1}
    local = f"localhost:{server.port}"
    assert _request_raw(server, "GET", "/health", headers={"Host": local})[0] == 200
    assert _post(server, hi)[0] == 200
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example"):  # DNS rebinding
        status, err = _request_raw(server, "GET", "/health", headers={"Host": host})
        assert status == 400 and err["error"]["code"] == "invalid_host", (host, err)
        assert _request_raw(server, "GET", "/v1/models", headers={"Host": host})[0] == 400
    for origin in ("http://evil.example", "null", f"http://{local}"):  # a web page, even one served here
        status, err = _request_raw(server, "POST", "/v1/chat/completions", hi, headers={"Origin": origin})
        assert status == 403 and err["error"]["code"] == "origin_not_allowed", (origin, err)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None):  # CSRF
        status, err = _post_as(server, hi, content_type)
        assert status == 415 and "application/json" in err["error"]["message"], (content_type, err)
    assert _post_as(server, hi, "Application/JSON; charset=utf-8")[0] == 200


def _post_as(srv, body, content_type):
    return _request_raw(srv, "POST", "/v1/chat/completions", body, headers={"Content-Type": content_type})


def test_allowed_origin_gets_cors_answers():
    origin = "http://app.example"
    with ServerThread(golden_model(L15), max_batch=1, context=CONTEXT, allow_origins=[origin]) as srv:
        c = _conn(srv)
        c.request("OPTIONS", "/v1/chat/completions", headers={  # the browser's preflight
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization"})
        r = c.getresponse()
        r.read()
        assert r.status == 200 and r.getheader("access-control-allow-origin") == origin
        c.request("POST", "/v1/chat/completions", body=json.dumps({"messages": user("hi"), "max_tokens": 1}),
                  headers={"Origin": origin, "Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["choices"]
        assert r.getheader("access-control-allow-origin") == origin
        c.close()
        assert _request_raw(srv, "GET", "/v1/models", headers={"Origin": "http://evil.example"})[0] == 403


def _asgi_get(app, path, host):
    """Status of a GET on the ASGI app itself, with this Host header (no socket needed)."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", host.encode())], "client": ("127.0.0.1", 5000), "server": ("0.0.0.0", 8000)}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"]


def test_host_check_follows_the_configured_host():
    for host, answered, refused in (("gpu-box", ["gpu-box:8000", "GPU-BOX", "localhost:8000", "[::1]:8000"],
                                     ["evil.example", "gpu-box.evil.example:8000"]),
                                    ("0.0.0.0", ["evil.example", "10.1.2.3:8000"], [])):  # every interface
        app, engine = build_app(golden_model(L15), max_batch=1, context=CONTEXT, host=host)
        try:
            assert [_asgi_get(app, "/health", h) for h in answered] == [200] * len(answered), host
            assert [_asgi_get(app, "/health", h) for h in refused] == [400] * len(refused), host
        finally:
            engine.close()


def _closed_by_server(sock, timeout=60):
    """True once the server closed the connection (what it sent before is ignored)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except socket.timeout:
        return False
    finally:
        sock.close()


@pytest.mark.slow
def test_idle_and_slow_connections_are_closed():
    with ServerThread(golden_model(L15), max_batch=1, context=CONTEXT, read_timeout=1,
                      keep_alive_timeout=60) as srv:
        silent = socket.create_connection((srv.host, srv.port))
        slow_headers = socket.create_connection((srv.host, srv.port))
        after_answer = _conn(srv)  # one answer, then the next request's headers stall
        slow_body = socket.create_connection((srv.host, srv.port))
        try:
            slow_headers.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            after_answer.request("GET", "/health")
            assert after_answer.getresponse().read()
            after_answer.sock.sendall(b"GET /health HTTP/1.1\r\n")
            slow_body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                              b"application/json\r\nContent-Length: 1000\r\n\r\n{\"messages\"")
            slow_body.settimeout(60)
            assert slow_body.recv(65536).startswith(b"HTTP/1.1 408 ")
            for sock in (silent, slow_headers, after_answer.sock, slow_body):
                assert _closed_by_server(sock)
        finally:  # (a server still waiting for a body would not stop)
            for sock in (silent, slow_headers, slow_body):
                sock.close()
            after_answer.close()
        assert _request_raw(srv, "GET", "/health")[0] == 200


def test_connections_are_limited():
    with ServerThread(golden_model(L15), max_batch=1, context=CONTEXT, max_connections=2, read_timeout=120,
                      keep_alive_timeout=120) as srv:
        held = [_conn(srv), _conn(srv)]
        for c in held:  # two connections, kept open after their answers
            c.request("GET", "/health")
            r = c.getresponse()
            assert r.status == 200 and r.read()
        assert _health_status(srv) == 503  # uvicorn's plain-text answer
        held[0].close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _health_status(srv) != 200:
            time.sleep(0.05)
        assert _health_status(srv) == 200
        held[1].close()


def _health_status(srv):
    c = _conn(srv, 60)
    try:
        c.request("GET", "/health")
        return c.getresponse().status
    finally:
        c.close()


def test_one_access_log_line_per_request(server, caplog):
    caplog.set_level(logging.INFO, logger="tgllava.serve.access")
    r = client(server).chat.completions.create(model="x", messages=user("hi"), max_tokens=3)
    chunks = list(client(server).chat.completions.create(model="x", messages=user("hello"), max_tokens=2,
                                                         stream=True, stream_options={"include_usage": True}))
    assert _request_raw(server, "GET", "/v1/nothing")[0] == 404
    assert _post_as(server, {"messages": user("hi")}, "text/plain")[0] == 415
    want = [rf'"POST /v1/chat/completions HTTP/1.1" 200 \d+\.\d{{3}}s prompt_tokens={r.usage.prompt_tokens} '
            rf'completion_tokens={r.usage.completion_tokens}$',
            rf'"POST /v1/chat/completions HTTP/1.1" 200 \d+\.\d{{3}}s prompt_tokens={chunks[-1].usage.prompt_tokens} '
            rf'completion_tokens={chunks[-1].usage.completion_tokens}$',
            r'"GET /v1/nothing HTTP/1.1" 404 \d+\.\d{3}s$',
            r'"POST /v1/chat/completions HTTP/1.1" 415 \d+\.\d{3}s$']
    def lines():
        return [rec.getMessage() for rec in caplog.records if rec.name == "tgllava.serve.access"]

    deadline = time.monotonic() + 60  # a line is written once its answer was sent: it may come just after
    while len(lines()) < len(want) and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = lines()
    assert len(lines) == len(want), lines
    for line, pattern in zip(lines, want):
        assert re.match(r"127\.0\.0\.1:\d+ ", line) and re.search(pattern, line), (line, pattern)

# ---- the command line ----------------------------------------------------------------

def test_cli_serve_starts_and_stops():
    """The key comes from $TGLLAVA_API_KEY (out of `ps`); each request gets an access line on stderr."""
    llm_dir, clip_dir, _ = golden_set(L15)
    p = subprocess.Popen([sys.executable, "-m", "tgllava.cli", "serve", "--model", llm_dir, "--clip", clip_dir,
                          "--port", "0", "--max-batch", "2", "--context", "800"],
                         stderr=subprocess.PIPE, text=True, env=dict(subprocess_env(), TGLLAVA_API_KEY="k"),
                         cwd=tempfile.gettempdir())
    try:
        line = ""
        deadline = time.monotonic() + 300
        while "listening on" not in line and time.monotonic() < deadline and p.poll() is None:
            line = p.stderr.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.split("listening on ")[1].strip()
        host, port = url.split("//")[1].split("/")[0].split(":")
        srv = type("Addr", (), {"host": host, "port": int(port)})
        assert _request_raw(srv, "GET", "/health")[1]["status"] == "ok"
        assert _request_raw(srv, "GET", "/v1/models")[0] == 401
        assert _request_raw(srv, "GET", "/v1/models", key="k")[1]["data"][0]["id"] == "llava15-tiny"
        p.send_signal(signal.SIGINT)
        _, rest = p.communicate(timeout=60)
        assert p.returncode == 0
        access = [re.sub(r"^127\.0\.0\.1:\d+ | \d+\.\d{3}s$", "", line)  # client port and seconds vary
                  for line in rest.splitlines() if "HTTP/" in line]
        assert access == ['"GET /health HTTP/1.1" 200', '"GET /v1/models HTTP/1.1" 401',
                          '"GET /v1/models HTTP/1.1" 200'], rest
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_cli_serve_checks_arguments():
    llm_dir, clip_dir, _ = golden_set(L15)

    def serve(*args, **env):
        return subprocess.run([sys.executable, "-m", "tgllava.cli", "serve", "--model", llm_dir, *args],
                              capture_output=True, text=True, env=dict(subprocess_env(), **env),
                              cwd=tempfile.gettempdir(), timeout=300)

    r = serve("--max-batch", "0")
    assert r.returncode == 1 and "--max-batch" in r.stderr
    r = serve("--api-key", "")  # an unset variable must not turn authentication off
    assert r.returncode == 1 and "--api-key is empty" in r.stderr, r.stderr
    r = serve(TGLLAVA_API_KEY="")
    assert r.returncode == 1 and "$TGLLAVA_API_KEY is empty" in r.stderr, r.stderr
