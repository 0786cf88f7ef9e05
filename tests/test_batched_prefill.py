"""Batched admission: Scheduler.admit_many prefills several sequences in one call -- one product over all
their rows where the backend's products are exact for any number of rows (CPU compact formats), one
sequence at a time elsewhere (float32) -- and every sequence still gets bitwise its single run's tokens.
Also the one-call entry points (generate, generate_batch) run on the same scheduler loop."""
import numpy as np
import pytest

import tgllava
from golden_util import checkpoint, io
from tgllava.errors import ShapeError


def _requests(m, name, n):
    """n (C sequence, max_new_tokens) of different lengths: with the image, other text guides, text-only."""
    d = io(name)
    out = []
    for i in range(n):
        if i % 3 == 2:
            out.append((m._sequence(list(range(1 + i, 4 + 2 * i))), 3 + i % 4))
            continue
        pixels = d["pixel_values"] if i % 2 else d["pixel_values"][..., ::-1].copy()
        text = d["text_guide_ids"][..., :2 + i % 5] if "text_guide_ids" in d else None
        out.append((m._sequence(np.concatenate([d["input_ids"].ravel(), [40 + i, 41 + 2 * i]]), pixels, text),
                    2 + (5 * i) % 9))
    return out


def _run(s, ids):
    got = {i: [] for i in ids}
    while s.active:
        for i, tok, _ in s.step():
            if tok >= 0:
                got[i].append(tok)
    return [got[i] for i in ids]


@pytest.mark.parametrize("name,dtype", [pytest.param("tg-vicuna-tiny", "int8", marks=pytest.mark.slow),
                                        ("llava15-tiny", "int8"),
                                        pytest.param("llava15-tiny", "bfloat16", marks=pytest.mark.slow),
                                        pytest.param("llava15-tiny", "float32", marks=pytest.mark.slow)])
def test_admit_many_gives_every_sequence_its_single_run(name, dtype):
    m = tgllava.load(*checkpoint(name), dtype=dtype)
    reqs = _requests(m, name, 6)
    want = []
    for seq, n in reqs:
        one = m.scheduler(1)
        want.append(_run(one, [one.admit(seq, max_new_tokens=n, eos_ids=[])])[0])
        one.close()
    s = m.scheduler(6)
    ids = s.admit_many([dict(sequence=seq, max_new_tokens=n, eos_ids=[]) for seq, n in reqs])
    assert len(ids) == 6 and s.active == 6
    assert _run(s, ids) == want
    # admitted into a scheduler that is already running others: still the single runs
    first = s.admit_many([dict(sequence=reqs[0][0], max_new_tokens=reqs[0][1], eos_ids=[])])
    rest = s.admit_many([dict(sequence=seq, max_new_tokens=n, eos_ids=[]) for seq, n in reqs[1:4]])
    assert _run(s, first + rest) == want[:4]
    s.close()


def test_generate_batch_runs_on_the_scheduler_loop():
    """tg_generate is a client of the scheduler: a batch equals the single runs, last logits included."""
    m = tgllava.load(*checkpoint("llava15-tiny"), dtype="int8")
    d = io("llava15-tiny")
    ids = [int(t) for t in d["input_ids"].ravel()]
    reqs = [dict(input_ids=(ids if i % 2 else [t for t in ids if t != -200]) + [40 + i] * i,
                 pixels=d["pixel_values"] if i % 2 else None, max_new_tokens=2 + 3 * i) for i in range(4)]
    got = m.generate_batch(reqs, eos_token_id=[])
    for r, g in zip(reqs, got):
        one = {k: v for k, v in r.items() if k != "max_new_tokens"}
        assert m.generate(**one, max_new_tokens=r["max_new_tokens"], eos_token_id=[]) == g


def test_admit_many_refuses_bad_admissions_and_keeps_working():
    m = tgllava.load(*checkpoint("llava15-tiny"), dtype="int8")
    s = m.scheduler(2, context=32)
    ok = dict(sequence=m._sequence([1, 5, 9]), max_new_tokens=2, eos_ids=[])
    with pytest.raises(ShapeError, match="between 1 and the 2 slots"):
        s.admit_many([ok] * 3)
    with pytest.raises(ShapeError, match="between 1 and the 2 slots"):
        s.admit_many([])
    with pytest.raises(TypeError, match="not a dict"):
        s.admit_many([ok, ("ids",)])
    with pytest.raises(TypeError, match="invalid keyword"):
        s.admit_many([dict(ok, max_tokens=3)])
    bad = dict(ok, sequence=m._sequence(list(range(1, 40))))
    with pytest.raises(ShapeError, match="do not fit in the 32 positions"):
        s.admit_many([ok, bad])  # one bad sequence: nothing is admitted
    assert s.active == 0
    (i,) = s.admit_many([ok])
    with pytest.raises(ShapeError, match="no free slot"):
        s.admit_many([ok, ok])
    assert [len(t) for t in _run(s, [i])] == [2]  # the admitted one runs to its end
    assert s.active == 0
