"""Continuous batching in Model.generate_many / generate_batch: answers equal single runs, short
sequences end first and free their slot for the next request, requests are read lazily, the cache
grows for a longer request, and callbacks, sampling and bad requests behave as in generate()."""
import numpy as np
import pytest

import tgllava
from golden_util import io, model


def _mixed_requests(name, n):
    """n requests of one golden set: with and without the image, other text guides, own lengths."""
    d = io(name)
    out = []
    for i in range(n):
        r = dict(input_ids=np.concatenate([d["input_ids"], [40 + i, 41 + 2 * i]]), max_new_tokens=2 + (5 * i) % 9)
        if i % 3 == 2:
            r = dict(input_ids=list(range(1 + i, 7 + i)), max_new_tokens=3 + i % 4)
        elif "text_guide_ids" in d:
            r.update(pixels=d["pixel_values"] if i % 2 else d["pixel_values"][:, ::-1].copy(),
                     text_ids=d["text_guide_ids"][:2 + i % 5])
        else:
            r["pixels"] = d["pixel_values"]
        out.append(r)
    return out


def _in_two_threads(work):
    """work(0) and work(1) in two threads at once; returns when both are done."""
    import threading
    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _single(m, r, **kw):
    one = {k: v for k, v in r.items() if k != "max_new_tokens"}
    return m.generate(**one, max_new_tokens=r["max_new_tokens"], eos_token_id=[], **kw)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tg-vicuna-tiny", "llava15-tiny"])
def test_batch_through_few_slots_equals_single_runs(name):
    m = model(name)
    reqs = _mixed_requests(name, 10)
    got = m.generate_batch(reqs, eos_token_id=[], max_batch=3)
    assert [len(g) for g in got] == [r["max_new_tokens"] for r in reqs]
    for r, g in zip(reqs, got):
        assert _single(m, r) == g  # bitwise: the same greedy tokens


@pytest.mark.slow
def test_sampled_tokens_equal_single_runs_with_the_same_seed():
    m = model("tg-qwen2-tiny")
    reqs = _mixed_requests("tg-qwen2-tiny", 5)
    kw = dict(temperature=0.9, top_p=0.95, seed=1234)
    got = m.generate_batch(reqs, eos_token_id=[], max_batch=2, **kw)
    for r, g in zip(reqs, got):
        assert _single(m, r, **kw) == g


def test_short_sequences_end_first_and_their_slot_is_taken_at_once():
    m = model("llava15-tiny")
    base = list(io("llava15-tiny")["input_ids"][:1]) + [5, 6, 7]
    reqs = [dict(input_ids=base + [i], max_new_tokens=n) for i, n in enumerate([12, 2, 2, 2, 3])]
    order = [i for i, _ in m.generate_many(reqs, eos_token_id=[], max_batch=2)]
    # static batches of 2 would end request 0 before requests 2..4 could start
    assert order == [1, 2, 3, 4, 0]


def test_requests_are_read_only_as_slots_free():
    m = model("llava15-tiny")
    pulled = []

    def requests():
        for i in range(6):
            pulled.append(i)
            yield dict(input_ids=[1, 8 + i, 9], max_new_tokens=2)

    it = m.generate_many(requests(), eos_token_id=[], max_batch=2)
    first = next(it)
    assert first[0] == 0 and len(pulled) <= 3  # two admitted, at most one more read while they ran
    rest = list(it)
    assert sorted([first[0]] + [i for i, _ in rest]) == list(range(6)) and pulled == list(range(6))


@pytest.mark.slow
def test_a_longer_request_later_grows_the_cache():
    name = "llava15-tiny"
    d, m = io(name), model(name)
    long_req = dict(input_ids=d["input_ids"], pixels=d["pixel_values"], max_new_tokens=6)
    reqs = [dict(input_ids=[1, 2, 3], max_new_tokens=3), dict(input_ids=[1, 4], max_new_tokens=2), long_req,
            dict(input_ids=[1, 5, 6], max_new_tokens=4)]
    got = dict(m.generate_many(iter(reqs), eos_token_id=[], max_batch=2))  # a generator: lengths unknown ahead
    for i, r in enumerate(reqs):
        assert got[i] == _single(m, r), i


def test_callback_sees_every_token_and_can_end_one_sequence():
    m = model("llava15-tiny")
    reqs = [dict(input_ids=[1, 3 + i, 9], max_new_tokens=6) for i in range(4)]
    full = m.generate_batch(reqs, eos_token_id=[], max_batch=2)
    seen = {i: [] for i in range(4)}

    def cb(index, token):
        seen[index].append(token)
        return index == 1 and len(seen[1]) == 3

    got = m.generate_batch(reqs, eos_token_id=[], max_batch=2, callback=cb)
    assert got[1] == full[1][:3] and seen[1] == got[1]
    for i in (0, 2, 3):
        assert got[i] == full[i] == seen[i]


def test_eos_ends_a_sequence_without_the_stop_token():
    name = "llava15-tiny"
    d, m = io(name), model(name)
    g = d["generated_ids"].tolist()
    req = dict(input_ids=d["input_ids"], pixels=d["pixel_values"])
    got = m.generate_batch([req, dict(input_ids=[1, 2, 3])], max_new_tokens=10, eos_token_id=g[2])
    assert got[0] == g[:2]


def test_bad_requests_raise_clearly_and_the_model_keeps_working():
    m = model("llava15-tiny")
    vocab = m.sizes["vocab"]
    good = [dict(input_ids=[1, 2, 3], max_new_tokens=2)] * 3

    def requests():
        yield from good
        yield dict(input_ids=[1, vocab + 5])

    with pytest.raises(tgllava.ShapeError, match="outside"):
        list(m.generate_many(requests(), eos_token_id=[], max_batch=2))
    with pytest.raises(tgllava.ShapeError, match="max_new_tokens"):
        m.generate_batch(good + [dict(input_ids=[1, 2], max_new_tokens=-1)])
    with pytest.raises(tgllava.ShapeError, match="max_new_tokens"):
        m.generate_batch(good, return_last_logits=True)
    with pytest.raises(tgllava.ShapeError, match="temperature"):
        m.generate_many(good, temperature=float("nan"))  # checked at the call, not at the first token
    for bad in (0, 257, 2.5, True):
        with pytest.raises(ValueError, match="max_batch"):
            m.generate_many(good, max_batch=bad)
    with pytest.raises(TypeError, match="request"):
        m.generate_batch([[1, 2, 3], [4, 5]])
    with pytest.raises(tgllava.ShapeError, match="input_ids"):
        m.generate_batch([dict(input_ids=[1, 2]), dict(ids=[1, 2])])
    assert m.generate_batch(good, eos_token_id=[]) == [m.generate([1, 2, 3], max_new_tokens=2, eos_token_id=[])] * 3
    assert m.generate_batch([], max_new_tokens=2) == []


def test_an_unfinished_iterator_frees_its_scheduler():
    m = model("llava15-tiny")
    reqs = [dict(input_ids=[1, 2, 3 + i], max_new_tokens=4 + i) for i in range(4)]
    it = m.generate_many(reqs, eos_token_id=[], max_batch=2)
    next(it)
    it.close()  # the scheduler's cache is freed; nothing stays in flight on the model
    assert m._core.calls_in_flight == 0
    assert m.generate_batch(reqs, eos_token_id=[]) == [_single(m, r) for r in reqs]


def test_batches_from_two_threads_interleave_and_stay_exact():
    """Each generate_batch has its own scheduler and cache; their decode steps interleave on the model's lock."""
    m = model("llava15-tiny")
    jobs = [[dict(input_ids=[1, 2 + i + 10 * k, 9], max_new_tokens=3 + i) for i in range(4)] for k in range(2)]
    want = [m.generate_batch(reqs, eos_token_id=[], max_batch=2) for reqs in jobs]
    got, errors = [None, None], []

    def work(k):
        try:
            got[k] = m.generate_batch(jobs[k], eos_token_id=[], max_batch=2)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    _in_two_threads(work)
    assert not errors and got == want


def test_two_threads_stepping_one_scheduler_each_get_their_own_events():
    """Issue 21 item 9: step() read a buffer shared by the scheduler after the model's lock was released, so a
    step running in another thread overwrote its events (a quarter of the tokens came from the other step).
    However two threads' steps interleave, every sequence gets exactly its own tokens, each once."""
    import collections
    import threading
    m = model("llava15-tiny")
    prompts = [[1, 5 + i, 9, 40 + 3 * i] for i in range(8)]
    want = [m.generate(p, max_new_tokens=24, eos_token_id=[]) for p in prompts]
    for attempt in range(3):
        s = m.scheduler(8)
        ids = [s.admit(m._sequence(p), max_new_tokens=24, eos_ids=[]) for p in prompts]
        got, errors, start = [[], []], [], threading.Barrier(2)

        def work(k):
            try:
                start.wait()
                while True:
                    events = s.step()
                    if not events:
                        return
                    got[k].append(events)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        _in_two_threads(work)
        s.close()
        assert not errors
        steps = got[0] + got[1]
        assert len(steps) == 24 and all(sorted(i for i, _, _ in ev) == sorted(ids) for ev in steps)
        for i, w in zip(ids, want):
            tokens = [tok for ev in steps for j, tok, _ in ev if j == i]
            finished = [fin for ev in steps for j, _, fin in ev if j == i and fin]
            assert collections.Counter(tokens) == collections.Counter(w) and finished == [2], (attempt, i)


@pytest.mark.slow
def test_compact_formats_decode_all_rows_in_one_product_and_equal_single_runs():
    """Compact CPU formats are exact per row for any batch (matmul.c), so the scheduler decodes all its rows
    in one product: 20 sequences at once still give each one its own generate() tokens."""
    from golden_util import checkpoint
    m = tgllava.load(*checkpoint("llava15-tiny"), dtype="int8")
    reqs = _mixed_requests("llava15-tiny", 20)
    got = m.generate_batch(reqs, eos_token_id=[], max_batch=20)
    for r, g in zip(reqs, got):
        assert _single(m, r) == g
