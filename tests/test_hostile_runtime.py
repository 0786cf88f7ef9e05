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
            # continuous batching only those of one decode step's rows, at most _C.CPU_EXACT_ROWS)
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


def test_one_sampling_rule_for_python_and_the_extension():
    """model.check_sampling (what Model, serve and the CLI apply) and the extension's generate refuse the
    same values with the same message: both are _C.check_sampling."""
    from tgllava.model import check_sampling

    m = model("llava15-tiny")
    n = m.sizes["max_len"]
    seq = [{"ids": np.array([1, 2], np.int32)}]
    for kw in (dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_p=0.0), dict(top_p=1.5),
               dict(top_k=-1), dict(repetition_penalty=0.0), dict(repetition_penalty=1e39), dict(max_new_tokens=n + 1)):
        kw = {"max_new_tokens": 2, **kw}
        with pytest.raises(tgllava.ShapeError) as in_python:
            check_sampling(**kw, max_len=n)
        with pytest.raises(tgllava.ShapeError) as in_c:
            m._core.generate(seq, **kw)
        assert str(in_python.value) == str(in_c.value), kw
    assert check_sampling(2, temperature=tgllava._C.MIN_TEMPERATURE / 2)[1] == 0.0  # greedy below the C minimum


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


# ---- byte order, alignment and integer ranges at the binding (issue 21 item 7)

def _misaligned(a):
    """A C-contiguous copy of `a` whose data starts one byte past an aligned address."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert out.flags.c_contiguous and not out.flags.aligned
    return out


def test_byte_swapped_and_misaligned_arrays_are_read_as_their_values():
    """'>f4' / '>i4' arrays used to be read as native bytes (tiling gave ~1e-41): every array argument
    of _C (tg_py_array) now reads the values, as NumPy's own C helpers do."""
    from tgllava import _C
    rng = np.random.default_rng(0)
    pix = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
    want = _C.op_elementwise("cpu", "upscale_tiles", pix)
    for odd in (pix.astype(">f4"), _misaligned(pix), _misaligned(pix.astype(">f4"))):
        np.testing.assert_array_equal(_C.op_elementwise("cpu", "upscale_tiles", odd), want)
    x, g = rng.normal(size=(3, 16)).astype(np.float32), rng.normal(size=16).astype(np.float32)
    want = _C.op_norm("cpu", x, g, None, 1e-6, True)
    np.testing.assert_array_equal(_C.op_norm("cpu", x.astype(">f4"), g.astype(">f4"), None, 1e-6, True), want)
    m = model("llava15-tiny")
    ids = np.array([1, 5, 9, 300], np.int32)
    want = m._core.logits({"ids": ids}, False)
    for odd in (ids.astype(">i4"), _misaligned(ids)):
        np.testing.assert_array_equal(m._core.logits({"ids": odd}, False), want)
        assert m._core.generate([{"ids": odd}], max_new_tokens=3)[0] == m._core.generate([{"ids": ids}], max_new_tokens=3)[0]
    assert pix.astype(">f4").dtype.byteorder == ">"  # the inputs were not modified


def test_integers_beyond_32_bits_are_refused_not_cut():
    """n_latents and eos ids used to be cut to 32 bits (2**32 became 0): now a ShapeError naming the argument."""
    m = model("llava15-tiny")
    first = m.generate([1, 5, 9], max_new_tokens=1, eos_token_id=[])[0]
    for bad in (2 ** 32 + first, 2 ** 31, -2 ** 31 - 1, 2 ** 64):
        with pytest.raises(tgllava.ShapeError, match=rf"eos id = {bad} is outside"):
            m.generate([1, 5, 9], max_new_tokens=3, eos_token_id=[bad])
    seq = {"ids": np.array([1, 5, 9], np.int32)}
    with pytest.raises(tgllava.ShapeError, match="eos id"):
        m._core.generate([seq], max_new_tokens=2, eos_ids=[0, 2 ** 32])
    with pytest.raises(TypeError, match="eos id must be an integer"):
        m._core.generate([seq], max_new_tokens=2, eos_ids=[1.5])
    with pytest.raises(tgllava.ShapeError, match="n_latents = 4294967296 is outside"):
        m.logits([1, 5, 9], n_latents=2 ** 32)
    with pytest.raises(tgllava.ShapeError, match="n_latents"):
        m._core.logits({**seq, "n_latents": 2 ** 32 + 3})
    with pytest.raises(tgllava.ShapeError, match="n_latents"):
        m.visual_token_count(n_latents=2 ** 32)
    pixels = np.zeros((1, 3, m.image_size, m.image_size), np.float32)
    with pytest.raises(tgllava.ShapeError, match="n_latents"):
        m.visual_tokens(pixels, n_latents=2 ** 33)
    s = m.scheduler(1)
    try:
        with pytest.raises(tgllava.ShapeError, match="eos id"):
            s.admit(seq, max_new_tokens=2, eos_ids=[2 ** 32 + first])
        assert s.active == 0
    finally:
        s.close()
    assert m.generate([1, 5, 9], max_new_tokens=2, eos_token_id=[first]) == []


def test_closing_a_scheduler_while_other_threads_wait_on_it_is_safe():
    """Issue 21 item 8: close() cleared the scheduler before taking the model's lock, so a step(), admit() or
    cancel() already waiting for the lock passed NULL into C (a segfault).  Here generate() holds the lock (in
    its callback) while three calls queue up on the scheduler and close() queues behind them; then the lock is
    let go.  Every call either ran before close() or raises TgError 'closed'; the model stays usable."""
    llm, clip = checkpoint("llava15-tiny")
    rc, out, err = _child("""
        import threading, time
        import numpy as np
        import tgllava
        m = tgllava.load({llm!r}, {clip!r})
        s = m.scheduler(2)
        sid = s.admit(m._sequence([1, 5, 9]), max_new_tokens=4, eos_ids=[])
        holding, go, results = threading.Event(), threading.Event(), {{}}

        def cb(token):
            if not holding.is_set():
                holding.set()
                go.wait()  # generate() keeps the model's lock meanwhile

        def call(name, f):
            try:
                results[name] = ("ok", f())
            except tgllava.TgError as e:
                results[name] = (type(e).__name__, str(e))

        def settle(n):  # `n` calls in flight (running or waiting for the lock), then time to reach the wait
            for _ in range(2000):
                if m._core.calls_in_flight >= n:
                    break
                time.sleep(0.005)
            time.sleep(0.3)

        gen = threading.Thread(target=lambda: m.generate([1, 2, 3], max_new_tokens=3, eos_token_id=[], callback=cb))
        gen.start()
        assert holding.wait(60)
        waiters = [threading.Thread(target=call, args=a) for a in
                   (("step", s.step), ("admit", lambda: s.admit(m._sequence([1, 7]), max_new_tokens=2, eos_ids=[])),
                    ("cancel", lambda: s.cancel(sid)))]
        for t in waiters:
            t.start()
        settle(4)
        closer = threading.Thread(target=call, args=("close", s.close))
        closer.start()
        settle(5)
        go.set()
        for t in [gen, closer] + waiters:
            t.join(60)
        for name in ("step", "admit", "cancel", "close"):
            print(name + ":", *results[name])
        for name, f in (("step", s.step), ("cancel", lambda: s.cancel(sid)), ("active", lambda: s.active)):
            call(name + " after", f)
            print(name + " after:", *results[name + " after"])
        s.close()  # twice is fine
        print("usable:", len(m.generate([1, 2, 3], max_new_tokens=2, eos_token_id=[])))
        """, timeout=120, llm=llm, clip=clip)
    assert rc == 0, f"the child died (rc {rc}): {err}"
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert lines["close"] == "ok None" and lines["usable"] == "2", out
    for name in ("step", "admit", "cancel"):
        assert lines[name].startswith("ok ") or lines[name].startswith("TgError") and "closed" in lines[name], out
    for name in ("step after", "cancel after", "active after"):
        assert lines[name].startswith("TgError") and "closed" in lines[name], out
