"""Tests of tgllava.generation, the one generation loop: stop strings (final_text, safe_text, StopTracker)
across token boundaries, the feature cache's budget and keys, and the Driver on a golden checkpoint: a
picture's features shared by two requests, cancel, a round of admissions in one prefill call with a bad
request failing alone, on_token stops and finish reasons, a failed step.  Every generation's tokens equal
its own generate() call."""

import numpy as np
import pytest
from golden_util import io, model

from tgllava import fixtures, tokenize
from tgllava.errors import ShapeError, TgError
from tgllava.generation import Driver, FeatureCache, Generation, StopTracker, final_text, safe_text

L15 = "llava15-tiny"


# ---- stop strings

def test_final_and_safe_text():
    assert final_text("  a ### b ###", ["###"]) == "a"
    assert final_text(" a </s> b", ["###", "</s>"]) == "a"
    assert final_text("x </s> y ### z", ["###", "</s>"]) == "x"  # the stop string that comes first
    assert final_text("abc ", [""]) == "abc"  # an empty stop string stops nothing
    assert safe_text("Hello ##", ["###"]) == "Hello"  # "##" may still become "###"
    assert safe_text("Hello ##", []) == "Hello ##"
    assert safe_text("Hello ## x", ["###"]) == "Hello ## x"
    assert safe_text("Hi ### there", ["###"]) == "Hi"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("generation-tok"))
    fixtures.write_llm_tokenizer(folder, vocab_size=400)
    return tokenize.LlmTokenizer.from_folder(folder)


@pytest.mark.parametrize("text,stops,answer", [
    ("  Hello there ### more text", ["###"], "Hello there"),
    ("A red ball.\n", ["###"], "A red ball."),
    ("x # y ## z", ["###"], "x # y ## z"),
    ("two##", ["###"], "two##"),
    ("ab\nUSER: cd ###", ["###", "USER:"], "ab"),
])
def test_stop_strings_across_token_boundaries(tok, text, stops, answer):
    per_char = [i for c in text for i in tok.encode(c, add_bos=False)]
    stop_end = min((text.find(s) + len(s) for s in stops if s in text), default=None)
    for script in (tok.encode(text, add_bos=False), per_char):
        tracker = StopTracker(tok, stops)
        pieces = []
        for token in script:
            hit = tracker.push(token)
            pieces.append(tracker.piece())
            assert answer.startswith("".join(pieces))  # a piece never shows what a later stop string takes back
            if hit:
                break
        assert tracker.hit_stop == (stop_end is not None)
        if script is per_char and stop_end is not None:  # one token a character: it stops at the stop's end
            assert len(tracker.decoder.ids) == stop_end
        assert tracker.answer() == answer
        pieces.append(tracker.last_piece(tracker.answer()))
        assert "".join(pieces) == answer


# ---- the feature cache

class CountingTower:
    """Stands in for a Model: cacheable_features returns zeros of the right shape and counts its calls."""

    def __init__(self, has_dp=True):
        self.has_dp, self.calls = has_dp, []

    def cacheable_features(self, pixels, use_dp):
        self.calls.append((float(pixels[0, 0, 0]), use_dp))
        return np.zeros((5 if use_dp else 1, 4, 8), np.float32)  # 640 or 128 bytes


def _picture(value):
    return np.full((3, 6, 6), value, np.float32)


def test_feature_cache_keeps_recent_pictures_within_its_budget():
    tower = CountingTower()
    cache = FeatureCache(tower, max_bytes=1300)  # two DP outputs of 640 bytes
    a, b, c = _picture(1), _picture(2), _picture(3)
    for p in (a, b, a, c, a, b):  # c drops b (a was used after b), then b drops c
        assert cache.lookup(p, use_dp=True).shape == (5, 4, 8)
    assert tower.calls == [(1, True), (2, True), (3, True), (2, True)]
    assert cache.bytes == 1280 and len(cache.entries) == 2
    cache.lookup(_picture(1).copy(), use_dp=True)  # the key is the content, not the array
    cache.lookup(a, use_dp=False)  # DP off: another output
    assert tower.calls[4:] == [(1, False)]
    no_dp = CountingTower(has_dp=False)
    small = FeatureCache(no_dp, max_bytes=100)  # smaller than one output: nothing is kept
    small.lookup(a, use_dp=True)
    small.lookup(a, use_dp=True)
    assert no_dp.calls == [(1, False), (1, False)] and small.bytes == 0
    assert FeatureCache(no_dp, 0).lookup(a, use_dp=True) is None and len(no_dp.calls) == 2
    with pytest.raises(ValueError, match="max_bytes"):
        FeatureCache(no_dp, -1)


# ---- the driver on a golden checkpoint

def _run(driver):
    while driver.running:
        driver.step()


def _single(m, input_ids, n, pixels=None):
    return m.generate(input_ids, pixels, max_new_tokens=n, eos_token_id=[])


def test_two_requests_of_one_picture_share_its_features(monkeypatch):
    m, d = model(L15), io(L15)
    original, calls = m.cacheable_features, []
    monkeypatch.setattr(m, "cacheable_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    prompts = [np.concatenate([d["input_ids"], [40 + i]]) for i in range(2)]
    driver = Driver(m, 2, feature_cache=FeatureCache(m))
    gens = [Generation(m._sequence(p, d["pixel_values"]), 3) for p in prompts]
    driver.admit(gens)
    assert len(calls) == 1 and len(driver.feature_cache.entries) == 1
    assert all(g.sequence is None for g in gens)  # the pixels are let go once the prompt is in
    _run(driver)
    driver.close()
    for p, g in zip(prompts, gens):
        assert g.finish_reason == "length" and g.tokens == _single(m, p, 3, d["pixel_values"])


def test_cancel_frees_the_slot_at_once_and_the_others_go_on():
    m = model(L15)
    prompts = [[1, 5 + i, 9] for i in range(3)]
    ended = []
    driver = Driver(m, 2, 64)
    gens = [Generation(m._sequence(p), 6, on_end=ended.append) for p in prompts]
    driver.admit(gens[:2])
    driver.step()
    driver.step()
    driver.cancel(gens[0])
    assert gens[0].finish_reason == "cancelled" and ended == [gens[0]] and driver.free == 1
    driver.cancel(gens[0])  # no longer running: nothing
    assert ended == [gens[0]]
    driver.admit([gens[2]])  # the freed slot takes the next one
    _run(driver)
    driver.close()
    assert gens[0].tokens == _single(m, prompts[0], 6)[:2]
    for p, g in zip(prompts[1:], gens[1:]):
        assert g.finish_reason == "length" and g.tokens == _single(m, p, 6)
    assert ended == gens


def test_a_round_is_one_prefill_call_and_a_bad_request_fails_alone(monkeypatch):
    m = model(L15)
    driver = Driver(m, 3, 32)
    prefill, rounds = driver._prefill, []
    monkeypatch.setattr(driver, "_prefill", lambda gens: rounds.append(len(gens)) or prefill(gens))
    prompts = [[1, 7 + i, 9] for i in range(4)]
    good = [Generation(m._sequence(p), 4) for p in prompts]
    too_long = Generation(m._sequence(list(range(1, 40))), 4)  # 43 positions in slots of 32
    driver.admit([good[0], too_long, good[1]])
    assert rounds == [3, 1, 1, 1]  # the round failed as a whole; then each went in alone
    assert too_long.finish_reason == "error" and isinstance(too_long.error, ShapeError) and driver.free == 1
    driver.step()
    driver.admit(good[2:3])
    _run(driver)
    driver.admit([good[3]] + [Generation(m._sequence(prompts[0]), 4)])
    assert rounds[-1] == 2  # a good round: one call
    _run(driver)
    driver.close()
    for p, g in zip(prompts, good):
        assert g.finish_reason == "length" and g.tokens == _single(m, p, 4)


def test_on_token_stops_and_finish_reasons():
    m = model(L15)
    prompts = [[1, 11, 9], [1, 12, 9], [1, 13, 9]]
    full = [_single(m, p, 5) for p in prompts]
    eos = full[2][2]
    driver = Driver(m, 3, 64)
    stopped = Generation(m._sequence(prompts[0]), 5, on_token=lambda token: len(stopped.tokens) == 2)
    length = Generation(m._sequence(prompts[1]), 5)
    at_eos = Generation(m._sequence(prompts[2]), 5, eos_ids=[eos])
    driver.admit([stopped, length, at_eos])
    driver.step()
    driver.step()
    assert stopped.finish_reason == "stop" and stopped.tokens == full[0][:2] and driver.free >= 1
    _run(driver)
    driver.close()
    assert (length.finish_reason, length.tokens) == ("length", full[1])
    assert (at_eos.finish_reason, at_eos.tokens) == ("eos", full[2][:full[2].index(eos)])


class FailingStep:
    """A scheduler whose step() fails (a lost device); everything else is the real one's."""

    def __init__(self, sched):
        self.sched = sched

    def __getattr__(self, name):
        return getattr(self.sched, name)

    def step(self):
        raise TgError("the device went away")


def test_a_failed_step_ends_every_running_generation_with_its_error():
    m = model(L15)
    ended = []
    driver = Driver(m, 2, 64)
    gens = [Generation(m._sequence([1, 20 + i, 9]), 4, on_end=ended.append) for i in range(2)]
    driver.admit(gens)
    driver.sched = FailingStep(driver.sched)
    driver.step()
    assert ended == gens and driver.running == {}
    assert all(g.finish_reason == "error" and "went away" in str(g.error) for g in gens)
    driver.close()
