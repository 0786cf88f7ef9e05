"""The one generation loop: a driver of the continuous-batching scheduler, its feature cache, stop strings.

Model.generate_many (so generate_batch and chat.chat_batch), the evaluation adapter and the
server's engine (which adds its thread, waiting line and cancellation) all run on a `Driver`:
a _C.Scheduler (Model.scheduler) and the `Generation`s in its slots.  `admit(generations)`
prefills one round of them, `step()` gives every running one a token (its `on_token` may end
it), `cancel(g)` ends one; each goes to its `on_end` once with `finish_reason` "eos" (a stop
token, not kept), "length", "stop" (on_token asked), "cancelled" or "error" (`error` set).
Every generation's tokens equal its own generate() call, whatever runs beside it.

`FeatureCache`: the vision-tower output of recent pictures (Model.cacheable_features), keyed by
the SHA-256 of the pixels and DP on/off, within a byte budget, least recently used dropped
first; a driver given one hands it to the prefill as `features=`, so a picture asked about
again skips the tower (MMBench's rotations, MME's question pairs, a client asking twice).

Stop strings follow LLaVA's KeywordsStoppingCriteria rule: generation stops once a stop string
appears in the decoded text, and the answer is that text cut at the first stop string,
stripped (`final_text`); `safe_text` is the part of the answer the text so far guarantees, and
`StopTracker` follows one answer's tokens and gives streamed pieces that join to the answer.
"""

import collections
import hashlib
import time

import numpy as np

from . import _C, tokenize
from .model import check_sampling, resolve_seed
from .errors import TgError

FEATURE_CACHE_BYTES = 256 << 20  # the default budget of a FeatureCache
FINISH = {1: "eos", 2: "length"}  # Scheduler.step's finish codes


# ---- stop strings

def _first_stop(text, stops):
    """Where the first stop string in `text` starts (len(text) when none is there)."""
    found = (text.find(s) for s in stops if s)  # one scan of the text per stop string
    return min((i for i in found if i >= 0), default=len(text))


def final_text(text, stops):
    """The answer in `text`: cut at the first stop string, whitespace stripped."""
    return text[:_first_stop(text, stops)].strip()


def safe_text(text, stops):
    """The longest prefix of the answer that `text`, decoded so far, guarantees.

    A trailing piece that could still grow into a stop string is held back, and the rest is
    stripped: the result is a prefix of final_text() of `text` and of every continuation of it.
    """
    cut = _first_stop(text, stops)
    if cut < len(text):
        return text[:cut].strip()
    hold = max((k for s in stops for k in range(1, min(len(s) - 1, len(text)) + 1) if text.endswith(s[:k])),
               default=0)
    return text[:len(text) - hold].strip()


class StopTracker:
    """Follows one answer's tokens as they come (tokenizer: a tgllava.tokenize tokenizer).

    push(token) decodes it and says whether a stop string has appeared (generation should stop);
    `decoder` (a tokenize.StreamDecoder) holds the text so far, `hit_stop` whether a stop string
    appeared, `decode_time` the seconds push() took.  Streamed pieces, piece() as tokens come and
    last_piece(answer()) once generation ended, join to exactly answer()."""

    def __init__(self, tokenizer, stops):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.decoder = tokenize.StreamDecoder(tokenizer)
        self.hit_stop = False
        self.decode_time = 0.0
        self.emitted = ""  # the streamed pieces so far, joined

    def push(self, token):
        t0 = time.perf_counter()
        self.decoder.push(token)
        if self.stops and any(s in self.decoder.text for s in self.stops):
            self.hit_stop = True
        self.decode_time += time.perf_counter() - t0
        return self.hit_stop

    def piece(self):
        """The answer text the tokens so far guarantee beyond the pieces given before ("" when none)."""
        safe = safe_text(self.decoder.text, self.stops)
        if len(safe) > len(self.emitted) and safe.startswith(self.emitted):
            piece, self.emitted = safe[len(self.emitted):], safe
            return piece
        return ""

    def answer(self):
        """The answer of every token pushed: their whole text decoded at once, cut at the first stop string,
        stripped."""
        return final_text(self.tokenizer.decode(self.decoder.ids), self.stops)

    def last_piece(self, answer):
        """What a stream still owes once the answer is known: the rest of `answer` after the pieces given."""
        return answer[len(self.emitted):] if answer.startswith(self.emitted) else ""


# ---- the feature cache

class FeatureCache:
    """Vision-tower outputs of recent pictures on one model (see the module text); for one thread.

    lookup(pixels, use_dp): the output for (3, S, S) float32 pixels, cached or computed now and kept
    within `max_bytes`.  A cache of 0 bytes holds nothing: lookup() returns None (the C core runs the
    tower in the prefill)."""

    def __init__(self, model, max_bytes=FEATURE_CACHE_BYTES):
        if int(max_bytes) < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.model, self.max_bytes = model, int(max_bytes)
        self.entries = collections.OrderedDict()  # (SHA-256 of the pixels, DP on) -> features, most recent last
        self.bytes = 0

    def lookup(self, pixels, use_dp):
        if self.max_bytes == 0:
            return None
        dp = bool(use_dp and self.model.has_dp)
        key = (hashlib.sha256(np.ascontiguousarray(pixels)).hexdigest(), dp)
        features = self.entries.get(key)
        if features is not None:
            self.entries.move_to_end(key)
            return features
        features = self.model.cacheable_features(pixels, use_dp=dp)
        if features.nbytes <= self.max_bytes:
            self.entries[key] = features
            self.bytes += features.nbytes
            while self.bytes > self.max_bytes:
                _, old = self.entries.popitem(last=False)
                self.bytes -= old.nbytes
        return features


# ---- the driver

class Generation:
    """One sequence a Driver runs: the C sequence dict (Model._sequence; let go once admitted, so the
    pixels are not kept while the answer runs), Scheduler.admit's sampling settings, on_token(token)
    (a true result ends it there) and on_end(generation).  The driver fills in `tokens` (the new
    ids), `finish_reason`, `error` and `sid` (its scheduler id)."""

    def __init__(self, sequence, max_new_tokens, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                 seed=0, eos_ids=(), on_token=None, on_end=None):
        self.sequence = sequence
        self.sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                             repetition_penalty=repetition_penalty, seed=seed, eos_ids=list(eos_ids))
        self.on_token, self.on_end = on_token, on_end
        self.tokens = []
        self.finish_reason = self.error = self.sid = None


class Driver:
    """Continuous batching on one model (see the module text): a _C.Scheduler of `slots` slots of
    `context` positions (None: the model's max_len), `decode_rows` as Model.scheduler takes it,
    and an optional FeatureCache.  For one thread at a time (the server's engine thread)."""

    def __init__(self, model, slots, context=None, decode_rows=None, feature_cache=None):
        self.model, self.slots, self.decode_rows = model, int(slots), decode_rows
        self.feature_cache = feature_cache
        self.sched = model.scheduler(self.slots, context, decode_rows)
        self.running = {}  # scheduler id -> Generation

    @property
    def context(self):
        """Positions per slot (prompt + new tokens)."""
        return self.sched.context

    @property
    def free(self):
        """Slots without a running generation."""
        return self.slots - len(self.running)

    def reopen(self, context):
        """A new, empty KV cache of `context` positions per slot (for a request longer than this one holds)."""
        if self.running:
            raise TgError(f"a Driver reopens only when nothing runs; {len(self.running)} generations run")
        self.sched.close()
        self.sched = self.model.scheduler(self.slots, context, self.decode_rows)

    def admit(self, generations):
        """Prefill a round of generations (at most `free` of them) into free slots, one scheduler call for the
        round.  One that cannot start (its picture's features or its prefill failed) ends with "error"; the
        others run."""
        ready = [g for g in generations if self._with_features(g)]
        if not ready:
            return
        try:
            ids = self._prefill(ready)
        except Exception as e:  # noqa: BLE001 - the generation's error, handed to its on_end
            if len(ready) == 1:
                self._end(ready[0], "error", e)
            else:  # which one failed: each goes in on its own
                for g in ready:
                    self.admit([g])
            return
        for g, sid in zip(ready, ids):
            g.sid, g.sequence = sid, None
            self.running[sid] = g

    def _with_features(self, g):
        """Put the cached vision-tower output into g's sequence; False when that failed (g ended with it)."""
        seq = g.sequence
        if self.feature_cache is None or seq.get("features") is not None or not isinstance(seq.get("pixels"),
                                                                                            np.ndarray):
            return True
        try:
            features = self.feature_cache.lookup(seq["pixels"], seq["use_dp"])
        except Exception as e:  # noqa: BLE001 - the generation's error, handed to its on_end
            self._end(g, "error", e)
            return False
        if features is not None:
            g.sequence = dict(seq, features=features)
        return True

    def _prefill(self, generations):
        """The scheduler call of one admission round: every generation's prompt into a slot, in one
        Scheduler.admit_many (one batched prefill where that keeps every row exact); their ids.  All or none:
        the scheduler admits nothing when one fails, and the error is raised."""
        return self.sched.admit_many([dict(g.sampling, sequence=g.sequence) for g in generations])

    def step(self):
        """One token for every running generation, handed to its on_token; those that end go to on_end.  A
        failed step ends every running generation with "error" (its tokens are lost)."""
        try:
            events = self.sched.step()
        except Exception as e:  # noqa: BLE001 - the generations' error, handed to their on_end
            for g in list(self.running.values()):
                self._end(g, "error", e, free_slot=True)
            return
        for sid, token, finish in events:
            g = self.running.get(sid)
            if g is None:
                continue
            stop = False
            if token >= 0:
                g.tokens.append(token)
                stop = g.on_token is not None and bool(g.on_token(token))
            if stop:
                self._end(g, "stop", free_slot=not finish)
            elif finish:
                self._end(g, FINISH[finish])

    def cancel(self, generation):
        """End a running generation now ("cancelled"): its slot is free at once.  Nothing when it is not running."""
        if generation.sid is not None and self.running.get(generation.sid) is generation:
            self._end(generation, "cancelled", free_slot=True)

    def _end(self, g, reason, error=None, free_slot=False):
        if g.sid is not None and self.running.pop(g.sid, None) is g and free_slot:
            try:
                self.sched.cancel(g.sid)
            except Exception:  # noqa: BLE001 - after a failed step the scheduler has dropped it already
                pass
        g.finish_reason, g.error = reason, error
        if g.on_end is not None:
            g.on_end(g)

    def close(self, error=None):
        """End every running generation ("error" with `error` when given, else "cancelled") and free the
        scheduler's cache."""
        for g in list(self.running.values()):
            self._end(g, "cancelled" if error is None else "error", error)
        self.sched.close()


# ---- Model.generate_many

def generate_many(model, requests, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                  seed=None, eos_token_id=None, callback=None, max_batch=None, feature_cache=None):
    """Model.generate_many on `model` (its text says what this does); pictures' vision-tower output comes
    from `feature_cache` when one is given.  Sampling values and max_batch are checked at once."""
    sampling = check_sampling(max_new_tokens, temperature, top_p, top_k, repetition_penalty, model.sizes["max_len"])
    if max_batch is None:
        max_batch = _C.CPU_EXACT_ROWS if model.device == "cpu" else 32
    if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or not 1 <= max_batch <= _C.MAX_BATCH:
        raise ValueError(f"max_batch must be an integer in [1, {_C.MAX_BATCH}], got {max_batch!r}")
    return _continuous(model, requests, sampling, resolve_seed(seed), model._eos(eos_token_id), callback,
                       int(max_batch), feature_cache)


def _continuous(model, requests, sampling, seed, eos, callback, slots, feature_cache):
    max_new_tokens, temperature, top_p, top_k, repetition_penalty = sampling
    ended = collections.deque()  # (index, Generation) in the order they ended

    def prepared(index, r):  # request r's Generation and the KV-cache positions it needs
        seq, n_new = model._request(r, max_new_tokens)
        on_token = None if callback is None else (lambda token: callback(index, token))
        g = Generation(seq, n_new, temperature, top_p, top_k, repetition_penalty, seed, eos, on_token,
                       lambda g: ended.append((index, g)))
        return g, model._core.spliced_length(seq) + n_new

    if isinstance(requests, (list, tuple)):  # all known: check them all first, size the cache once
        ready = [prepared(i, r) for i, r in enumerate(requests)]
        longest = max((need for _, need in ready), default=1)
        source = iter(ready)
    else:
        longest = 0
        source = (prepared(i, r) for i, r in enumerate(requests))

    def context(need):  # rounded up, so requests a little longer than the first ones still fit
        return max(longest, -(-(need + 64) // 128) * 128)

    def finished():
        while ended:
            index, g = ended.popleft()
            if g.error is not None:
                raise g.error
            yield index, g.tokens

    waiting = next(source, None)
    if waiting is None:
        return
    driver = Driver(model, slots, context(waiting[1]), feature_cache=feature_cache)
    try:
        while True:
            round_ = []
            while len(round_) < driver.free:  # the free slots take the next requests
                if waiting is None:
                    waiting = next(source, None)
                    if waiting is None:
                        break
                g, need = waiting
                if need > driver.context:
                    if driver.running or round_:
                        break  # a longer request: the running ones end first, then the cache grows
                    driver.reopen(context(need))
                round_.append(g)
                waiting = None
            driver.admit(round_)
            yield from finished()
            if not driver.running:
                return
            driver.step()
            yield from finished()
    finally:
        driver.close()
