"""The continuous-batching engine behind `tgllava serve`: one thread driving a _C.Scheduler.

`Engine(model, max_batch=16)` owns a C scheduler of `max_batch` KV-cache slots on a loaded
tgllava.Model and a worker thread that loops: end the sequences whose clients went away,
admit waiting requests into free slots (visual tokens + prompt prefill), then advance every
running sequence by one token in one batched forward.  A request is a `Job`: the sequence dict
Model.generate takes, sampling settings, stop strings, and `sink(kind, value)`, called from the
worker for its events:

    ("admitted", prompt_tokens)   the prompt is in a slot
    ("piece", text)               streaming jobs only: the next piece of the answer text
    ("done", Completion)          the answer (text, token ids, finish reason, token counts)
    ("error", exception)          the job failed (ShapeError: a bad request; others: internal)

Answers follow tgllava.chat exactly: the same stop-string rule (generation stops once a stop
string appears in the decoded text, the text is cut there and stripped) and the same streamed
pieces (they join to the final text), so with greedy decoding a job's answer equals Model.chat's
for the same prompt.  The waiting line is bounded: `submit` raises QueueFull when `max_batch`
jobs run and `max_queue` more wait; `reserve()` takes a place in it for a request still being read
(the server reserves before it decodes a picture, so a full server spends nothing on a request it
refuses).  `cancel(job)` ends a job; its slot is free before the next decode step.
`max_prompt_chars` bounds the text a prompt can have, checked before tokenizing (whose cost grows
with the text): `context` tokens of at most the longest token's length (no LLaVA tokenizer's
normalizer shrinks text, so no longer text fits).  Vision-tower
outputs are cached by image content (SHA-256 of the pixels) up to `feature_cache_bytes`, so the
same picture asked about again skips the vision tower.
"""

import collections
import dataclasses
import hashlib
import threading
import time

from .. import chat as chat_mod
from ..model import resolve_seed
from ..errors import TgError

FINISH = {1: "eos", 2: "length"}


class QueueFull(TgError):
    """The engine's waiting line is full (the server answers 503)."""


@dataclasses.dataclass
class Completion:
    """One finished answer: text (stop string cut, stripped), token ids, finish reason
    ("eos", "stop", "length" or "cancelled"), prompt positions and generated tokens."""

    text: str
    token_ids: list
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class Job:
    """One generation request (see the module text)."""

    def __init__(self, sequence, sink, max_new_tokens=512, temperature=0.0, top_p=1.0, seed=None, stops=(),
                 stream=False, prompt_tokens=0):
        self.sequence, self.sink = sequence, sink
        self.max_new_tokens, self.temperature, self.top_p = int(max_new_tokens), float(temperature), float(top_p)
        self.seed = resolve_seed(seed)
        self.stops = [s for s in stops if s]
        self.stream, self.prompt_tokens = bool(stream), int(prompt_tokens)
        self.sid = None          # scheduler id while running
        self.cancelled = False
        self.finished = False
        self._tracker = None
        self._emitted = ""


class Engine:
    """Continuous batching on one model (see the module text)."""

    def __init__(self, model, max_batch=16, context=None, max_queue=64, decode_rows=None,
                 feature_cache_bytes=256 << 20):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if int(max_queue) < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.model = model
        self.tokenizer = chat_mod.tokenizers(model)[0]
        self.eos_ids = list(self.tokenizer.eos_ids) or model._eos(None)
        self.sched = model.scheduler(int(max_batch), context, decode_rows)  # decode_rows None: the device's default
        self.max_batch, self.context, self.max_queue = int(max_batch), self.sched.context, int(max_queue)
        longest_token = max(len(t) for t in map(self.tokenizer.id_to_token, range(self.tokenizer.vocab_size)) if t)
        self.max_prompt_chars = self.context * longest_token
        self._cond = threading.Condition()
        self._pending = collections.deque()
        self._cancels = []
        self._active = {}
        self._admitting = 0  # jobs taken from the line, not yet in a slot
        self._reserved = 0   # places held by reserve() for requests still being read
        self._closed = False
        self._features = collections.OrderedDict()
        self._feature_bytes, self._feature_limit = 0, int(feature_cache_bytes)
        self.steps = 0  # decode steps so far; with step_seconds / admit_seconds (time in step() / in admission)
        self.step_seconds = self.admit_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="tgllava-engine", daemon=True)
        self._thread.start()

    # ---- called from any thread
    def submit(self, job, reserved=False):
        """Queue a job; QueueFull when every slot runs a job and max_queue more are waiting.  reserved=True:
        the job takes the place an earlier reserve() held (it is never refused for room)."""
        with self._cond:
            if reserved:
                self._reserved -= 1
            self._check_room()
            self._pending.append(job)
            self._cond.notify_all()

    def reserve(self):
        """Hold a place in the line for a request still being read (QueueFull when there is none); hand it
        to submit(job, reserved=True) or give it back with release()."""
        with self._cond:
            self._check_room()
            self._reserved += 1

    def release(self):
        """Give back a place reserve() held."""
        with self._cond:
            self._reserved -= 1

    def _check_room(self):
        if self._closed:
            raise TgError("the engine is closed")
        taken = len(self._pending) + len(self._active) + self._admitting + self._reserved
        if taken >= self.max_batch + self.max_queue:
            raise QueueFull(f"the server is busy: {len(self._active)} requests are running and "
                            f"{taken - len(self._active)} waiting (--max-batch {self.max_batch}, --max-queue "
                            f"{self.max_queue}); retry later")

    def cancel(self, job):
        """End a job (a client went away): waiting, it is dropped; running, its slot is freed before
        the next decode step."""
        with self._cond:
            if job.finished or job.cancelled:
                return
            job.cancelled = True
            try:
                self._pending.remove(job)
                job.finished = True
                return
            except ValueError:
                pass
            self._cancels.append(job)
            self._cond.notify_all()

    @property
    def running(self):
        return len(self._active)

    @property
    def waiting(self):
        return len(self._pending)

    def close(self):
        """Stop the worker (running and waiting jobs get an error) and free the scheduler."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self.sched.close()

    # ---- the worker
    def _run(self):
        while True:
            with self._cond:
                while not (self._closed or self._pending or self._cancels or self._active):
                    self._cond.wait()
                if self._closed:
                    break
                cancels, self._cancels = self._cancels, []
                free = self.max_batch - len(self._active)
                admits = [self._pending.popleft() for _ in range(min(free, len(self._pending)))]
                self._admitting = len(admits)
            for job in cancels:
                self._end(job, "cancelled", free_slot=True)
            for job in admits:
                t0 = time.perf_counter()
                self._admit(job)
                self.admit_seconds += time.perf_counter() - t0
                with self._cond:
                    self._admitting -= 1
            if self._active:
                t0 = time.perf_counter()
                self._step()
                self.step_seconds += time.perf_counter() - t0
        err = TgError("the server is shutting down")
        for job in list(self._active.values()) + list(self._pending):
            self._fail(job, err)

    def _fail(self, job, exc):
        if job.sid is not None:
            self._active.pop(job.sid, None)
        if not job.finished:
            job.finished = True
            job.sink("error", exc)

    def _cached_features(self, seq):
        """The vision-tower output of this sequence's image, from the cache or computed now."""
        pixels = seq["pixels"]
        dp = bool(seq.get("use_dp", True) and self.model.has_dp)
        key = (hashlib.sha256(pixels.tobytes()).hexdigest(), dp)
        feats = self._features.get(key)
        if feats is not None:
            self._features.move_to_end(key)
            return feats
        feats = self.model.cacheable_features(pixels, use_dp=dp)
        if feats.nbytes <= self._feature_limit:
            self._features[key] = feats
            self._feature_bytes += feats.nbytes
            while self._feature_bytes > self._feature_limit:
                _, old = self._features.popitem(last=False)
                self._feature_bytes -= old.nbytes
        return feats

    def _admit(self, job):
        if job.cancelled:
            job.finished = True
            return
        try:
            seq, job.sequence = dict(job.sequence), None  # the pixels are not kept while the answer runs
            if seq.get("pixels") is not None and self._feature_limit > 0:
                seq["features"] = self._cached_features(seq)
            job.sid = self.sched.admit(seq, max_new_tokens=job.max_new_tokens, temperature=job.temperature,
                                       top_p=job.top_p, seed=job.seed, eos_ids=self.eos_ids)
        except Exception as e:  # noqa: BLE001 - handed to the client
            job.sid = None
            self._fail(job, e)
            return
        self._active[job.sid] = job
        job._tracker = chat_mod._Tracker(self.tokenizer, job.stops)
        job.sink("admitted", job.prompt_tokens)

    def _step(self):
        try:
            events = self.sched.step()
        except Exception as e:  # noqa: BLE001 - a failed step fails the jobs that were running
            for job in list(self._active.values()):
                self._free(job)
                self._fail(job, e)
            return
        self.steps += 1
        for sid, token, finish in events:
            job = self._active.get(sid)
            if job is None:
                continue
            hit = False
            if token >= 0:
                hit = job._tracker.push(token)
                if job.stream:
                    safe = chat_mod._safe_text(job._tracker.decoder.text, job.stops)
                    if len(safe) > len(job._emitted) and safe.startswith(job._emitted):
                        job.sink("piece", safe[len(job._emitted):])
                        job._emitted = safe
            if finish:
                self._end(job, "stop" if hit else FINISH[finish], free_slot=False)
            elif hit or job.cancelled:
                self._end(job, "stop" if hit else "cancelled", free_slot=True)

    def _free(self, job):
        try:
            self.sched.cancel(job.sid)
        except Exception:  # noqa: BLE001 - the scheduler already dropped it after a failed step
            pass

    def _end(self, job, reason, free_slot):
        if job.sid is None or job.sid not in self._active:
            job.finished = True
            return
        if free_slot:
            self._free(job)
        del self._active[job.sid]
        if job.finished:
            return
        job.finished = True
        if reason == "cancelled":
            return
        tokens = job._tracker.tokens
        text = chat_mod._final_text(self.tokenizer.decode(tokens), job.stops)
        if job.stream and text.startswith(job._emitted) and len(text) > len(job._emitted):
            job.sink("piece", text[len(job._emitted):])
        job.sink("done", Completion(text, list(tokens), reason, job.prompt_tokens, len(tokens)))
