"""The one streaming loop (tgllava.streaming.TokenStream) behind Model.generate_stream and chat(stream=True).

A stream runs at most LOOKAHEAD tokens ahead of its reader; one that is no longer read (but still
referenced) gives the model up to the next call on it, which then returns promptly instead of
waiting for the whole generation (issue 13, item 7), and the stream raises StreamCancelled after
the tokens it holds.  Closing a stream stops its generation; errors of the generation reach the
reader.  The bound and the hand-over are checked on a scripted generation (no model) and on the
golden llava15-tiny model with a text-only prompt, whose decode is fast enough to make a
2,000-token stream.
"""

import threading
import time

import pytest
from golden_util import model

from tgllava import streaming
from tgllava.streaming import LOOKAHEAD, StreamCancelled, TokenStream

PROMPT = [1, 15, 16, 17, 18, 19]  # text only: prefill is cheap, decode dominates
LONG = 2000


class Script:
    """run(callback) for TokenStream: yields 0, 1, 2, ... up to n, counting what it produced."""

    def __init__(self, n=10_000, fail_at=None):
        self.n, self.fail_at = n, fail_at
        self.produced = 0
        self.finished = threading.Event()

    def __call__(self, callback):
        out = []
        try:
            for i in range(self.n):
                if self.fail_at is not None and i == self.fail_at:
                    raise ValueError(f"scripted failure at {i}")
                self.produced += 1
                out.append(i)
                if callback(i):
                    break
            return out
        finally:
            self.finished.set()


def test_lookahead_is_bounded_and_close_stops_the_worker():
    run = Script()
    s = TokenStream(object(), run)
    assert run.produced == 0  # nothing runs before the first read
    assert next(s) == 0
    time.sleep(0.3)
    assert run.produced <= LOOKAHEAD + 2  # the worker waits for the reader
    assert [next(s) for _ in range(5)] == [1, 2, 3, 4, 5]
    s.close()
    assert run.finished.wait(5)
    assert run.produced <= LOOKAHEAD + 8
    with pytest.raises(StopIteration):
        next(s)


def test_a_read_stream_yields_everything_and_keeps_the_result():
    run = Script(n=100)
    s = TokenStream(object(), run, lookahead=3)
    assert list(s) == list(range(100))
    assert s.tokens == list(range(100)) and not s.cancelled


def test_on_token_can_stop_and_errors_reach_the_reader():
    s = TokenStream(object(), Script(), on_token=lambda t: t == 4)
    assert list(s) == [0, 1, 2, 3, 4]
    s = TokenStream(object(), Script(fail_at=3))
    with pytest.raises(ValueError, match="scripted failure at 3"):
        list(s)
    with pytest.raises(ValueError):
        TokenStream(object(), Script(), lookahead=0)


def test_an_unread_stream_yields_the_model_to_the_next_call():
    m = model("llava15-tiny")
    t0 = time.perf_counter()
    want = m.generate(PROMPT, max_new_tokens=LONG, eos_token_id=[])
    full = time.perf_counter() - t0
    assert len(want) == LONG

    g = m.generate_stream(PROMPT, max_new_tokens=LONG, eos_token_id=[])
    got = [next(g)]
    t0 = time.perf_counter()
    short = m.generate(PROMPT, max_new_tokens=5, eos_token_id=[])  # the stream holds the model here
    took = time.perf_counter() - t0
    assert short == want[:5]
    assert took < max(1.0, full / 2), (took, full)

    with pytest.raises(StreamCancelled, match="not being read"):
        for tok in g:
            got.append(tok)
    assert got == want[:len(got)]
    assert len(got) <= LOOKAHEAD + 1 and len(g.tokens) <= LOOKAHEAD + 2
    assert g.cancelled
    # the model is fine afterwards, and a stream that is read runs to its end
    assert list(m.generate_stream(PROMPT, max_new_tokens=40, eos_token_id=[])) == want[:40]


def test_a_closed_stream_frees_the_model_at_once():
    m = model("llava15-tiny")
    g = m.generate_stream(PROMPT, max_new_tokens=LONG, eos_token_id=[])
    first = next(g)
    g.close()
    assert len(g.tokens) <= LOOKAHEAD + 2
    assert m.generate(PROMPT, max_new_tokens=3, eos_token_id=[])[0] == first
    with pytest.raises(TypeError, match="callback"):
        m.generate_stream(PROMPT, callback=print)


def test_the_model_counts_calls_in_flight():
    m = model("llava15-tiny")
    assert isinstance(m._core, streaming.CountedCore)
    seen = []
    m.generate(PROMPT, max_new_tokens=2, eos_token_id=[], callback=lambda t: seen.append(m._core.calls_in_flight))
    assert seen == [1, 1] and m._core.calls_in_flight == 0
