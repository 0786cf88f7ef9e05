"""The model under hostile or careless calls (issue 13): re-entrant callbacks, Ctrl-C during
generate(), an uninitialised _C.Model, host out-of-memory inside the model, absurd sampling
values and token budgets, (B, T) ids given to generate().  Calls that used to hang or crash
run in a subprocess, so a regression fails the test instead of killing the test run."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import tgllava
from golden_util import checkpoint, model, tiny_llama_folder

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tgllava.__file__)))


def _child(code, timeout=120, **fmt):
    """Run `code` in a fresh interpreter importing the tested tgllava; (returncode, stdout, stderr)."""
    src = f"import sys; sys.path.insert(0, {PKG_ROOT!r})\n" + textwrap.dedent(code).format(**fmt)
    p = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def test_reentrant_call_from_a_callback_raises_instead_of_deadlocking():
    llm, clip = checkpoint("llava15-tiny")
    try:
        rc, out, err = _child("""
            import tgllava
            m = tgllava.load({llm!r}, {clip!r})
            ids = [1, 5, 9]
            try:
                m.generate(ids, max_new_tokens=3, eos_token_id=[], callback=lambda t: m.logits(ids))
                print("no error")
            except tgllava.TgError as e:
                print("raised", type(e).__name__, e)
            print("after", len(m.generate(ids, max_new_tokens=2, eos_token_id=[])))
            """, timeout=60, llm=llm, clip=clip)
    except subprocess.TimeoutExpired:
        pytest.fail("generate with a callback calling the same model deadlocked")
    assert rc == 0, err
    assert "raised TgError re-entrant call" in out and "after 2" in out, out


INTERRUPTED_CHILD = """
import json, time
import tgllava
m = tgllava.load({llm!r}, {clip!r})
ids = [1, 5, 9]
ref = m.generate(ids, max_new_tokens=3, eos_token_id=[])
t0 = time.monotonic()
m.generate(ids, max_new_tokens=2000, eos_token_id=[])
print("start", time.monotonic() - t0, flush=True)  # how long the whole run takes on this machine
t0 = time.monotonic()
try:
    m.generate(ids, max_new_tokens=2000, eos_token_id=[])
    result = {{"interrupted": False}}
except KeyboardInterrupt:
    result = {{"interrupted": True}}
result["seconds"] = time.monotonic() - t0
result["usable"] = m.generate(ids, max_new_tokens=3, eos_token_id=[]) == ref
print(json.dumps(result), flush=True)
"""


def test_ctrl_c_stops_generate_without_callback_and_the_model_stays_usable():
    """SIGINT a quarter into a 2,000-token generate() (at most 0.5 s in) must stop it well before its end."""
    llm, clip = checkpoint("llava15-tiny")
    src = f"import sys; sys.path.insert(0, {PKG_ROOT!r})\n" + INTERRUPTED_CHILD.format(llm=llm, clip=clip)
    p = subprocess.Popen([sys.executable, "-c", src], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        word, full = (p.stdout.readline().split() + ["", ""])[:2]
        assert word == "start", p.stderr.read()
        full = float(full)
        delay = min(0.5, full / 4)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        line = p.stdout.readline()
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, p.stderr.read()
    res = json.loads(line)
    assert res["interrupted"] and res["usable"], res
    assert res["seconds"] < delay + (full - delay) / 2, (res, full, delay)  # not after all tokens were made


def test_uninitialised_core_model_raises_instead_of_crashing():
    rc, out, err = _child("""
        import tgllava._C as C
        from tgllava.errors import TgError
        m = C.Model.__new__(C.Model)
        calls = {{"config": lambda: m.config, "device": lambda: m.device, "required": m.required,
                 "generate": lambda: m.generate([{{"ids": None}}]), "logits": lambda: m.logits({{}}),
                 "set_tensor": lambda: m.set_tensor("x", None, 0), "finish": m.finish,
                 "vision_features": lambda: m.vision_features(None), "visual_token_count": m.visual_token_count}}
        for name, call in calls.items():
            try:
                call()
                print(name, "no error")
            except TgError as e:
                print(name, "TgError", "not initialised" in str(e))
        """, timeout=60)
    assert rc == 0, f"the child died (rc {rc}): {err}"
    lines = out.split("\n")
    assert len([x for x in lines if x.endswith("TgError True")]) == 9, out


@pytest.fixture(scope="module")
def big_vocab_dir(tmp_path_factory):
    """A 1-layer Llama with a 131072-token vocabulary (so one generate call's logits take 64 MB)."""
    d = tmp_path_factory.mktemp("bigvocab")
    tiny_llama_folder(d, vocab=1 << 17, seed=1)
    return str(d)


def test_host_out_of_memory_inside_the_model_is_a_memory_error(big_vocab_dir):
    _, clip = checkpoint("llava15-tiny")
    rc, out, err = _child("""
        import resource
        import tgllava
        m = tgllava.load({llm!r}, {clip!r})
        reqs = [dict(input_ids=[1, 2])] * 128   # 128 x 131072 float32 logits: 64 MB on the host
        m.generate_batch(reqs[:1], max_new_tokens=2, eos_token_id=[])  # threads, arena, caches warmed up
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm + (24 << 20), hard))
        try:
            # the C core's static batch holds the logits of all 128 rows at once (generate_batch's
            # continuous batching only those of the 8 rows of a decode step)
            m._core.generate([m._sequence(r["input_ids"]) for r in reqs], max_new_tokens=1, eos_ids=[])
            print("no error")
        except Exception as e:
            print("raised", type(e).__name__, isinstance(e, MemoryError), isinstance(e, tgllava.TgError), e)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        print("after", len(m.generate_batch(reqs[:2], max_new_tokens=2, eos_token_id=[])))
        """, timeout=120, llm=big_vocab_dir, clip=clip)
    assert rc == 0, err
    assert "raised OutOfMemoryError True True out of memory" in out and "after 2" in out, out


# ---- sampling values, token budgets and id shapes

def test_non_finite_sampling_values_are_refused():
    m = model("llava15-tiny")
    nan, inf = float("nan"), float("inf")
    for kw in (dict(temperature=nan), dict(temperature=inf), dict(temperature=-1.0), dict(top_p=nan),
               dict(top_p=1.5), dict(repetition_penalty=nan), dict(repetition_penalty=inf), dict(repetition_penalty=0.0),
               dict(top_k=-1), dict(max_new_tokens=nan), dict(temperature="hot")):
        with pytest.raises(tgllava.ShapeError):
            m.generate([1, 2], **{"max_new_tokens": 2, **kw})
    seq = [{"ids": np.array([1, 2], np.int32)}]
    for kw in (dict(temperature=nan), dict(top_p=nan), dict(repetition_penalty=nan), dict(temperature=inf)):
        with pytest.raises(tgllava.ShapeError, match="finite"):
            m._core.generate(seq, max_new_tokens=2, **kw)


def test_tiny_temperatures_are_greedy():
    m = model("llava15-tiny")
    greedy = m.generate([1, 5, 9], max_new_tokens=6, eos_token_id=[])
    for t in (1e-39, 1e-30, 1e-7):
        assert m.generate([1, 5, 9], max_new_tokens=6, eos_token_id=[], temperature=t, seed=3) == greedy, t
        seq = [{"ids": np.array([1, 5, 9], np.int32)}]
        assert m._core.generate(seq, max_new_tokens=6, temperature=t, seed=3)[0][0] == greedy, t


def test_huge_max_new_tokens_is_refused_at_once():
    m = model("llava15-tiny")
    n = m.sizes["max_len"]
    assert len(m.generate([1, 2], max_new_tokens=0)) == 0
    for big in (2 ** 31 - 1, 2 ** 31, 2 ** 70, n + 1):
        t0 = time.monotonic()
        with pytest.raises(tgllava.ShapeError, match="max_new_tokens"):
            m.generate([1, 2], max_new_tokens=big, eos_token_id=[])
        assert time.monotonic() - t0 < 2.0
    seq = [{"ids": np.array([1, 2], np.int32)}]
    for big in (2 ** 31 - 1, 2 ** 31, n + 1, -1):
        with pytest.raises(tgllava.ShapeError, match="max_new_tokens"):
            m._core.generate(seq, max_new_tokens=big)
    with pytest.raises(tgllava.ShapeError):
        m._core.generate(seq, max_new_tokens=2 ** 70)


def test_generate_refuses_a_batch_of_ids():
    m = model("llava15-tiny")
    with pytest.raises(tgllava.ShapeError, match="generate_batch"):
        m.generate(np.array([[1, 2, 3], [4, 5, 6]]), max_new_tokens=2)
    with pytest.raises(tgllava.ShapeError, match="one sequence"):
        m.logits(np.ones((2, 2, 2), np.int64))
    one = m.generate([1, 2, 3], max_new_tokens=3, eos_token_id=[])
    assert m.generate(np.array([[1, 2, 3]]), max_new_tokens=3, eos_token_id=[]) == one


def test_cli_refuses_non_finite_sampling_before_loading(tmp_path, capsys):
    from tgllava import cli
    (tmp_path / "ckpt").mkdir()  # not a checkpoint: loading it would fail with another message
    (tmp_path / "x.png").write_bytes(b"not read either")
    for opt in (["--temperature", "nan"], ["--temperature", "inf"], ["--top-p", "nan"], ["--temperature", "-2"]):
        rc = cli.main(["generate", "--model", str(tmp_path / "ckpt"), "--image", str(tmp_path / "x.png"),
                       "--question", "hi"] + opt)
        err = capsys.readouterr().err
        assert rc != 0 and ("temperature" in err or "top_p" in err), err
