"""The continuous-batching engine behind `tgllava serve`: one thread running a generation.Driver.

`Engine(model, max_batch=16)` owns a generation.Driver (a C scheduler of `max_batch` KV-cache
slots) on a loaded tgllava.Model and a worker thread that loops: end the sequences whose clients
went away, admit waiting requests into free slots (one prefill round at a time), then advance
every running sequence by one token in one batched forward.  A request is a `Job`: the sequence
dict Model.generate takes, sampling settings, stop strings, and `sink(kind, value)`, called from
the worker for its events:

    ("admitted", prompt_tokens)   the prompt is in a slot
    ("piece", text)               streaming jobs only: the next piece of the answer text
    ("done", Completion)          the answer (text, token ids, finish reason, token counts)
    ("error", exception)          the job failed (ShapeError: a bad request; others: internal)

Answers follow tgllava.chat exactly (generation.StopTracker: the same stop-string rule and
streamed pieces), so with greedy decoding a job's answer equals Model.chat's.  The waiting line
is bounded: `submit` raises QueueFull when `max_batch` jobs run and `max_queue` more wait;
`reserve()` holds a place for a request still being read (so a full server spends nothing on a
request it refuses).  `cancel(job)` frees its slot before the next decode step.
`max_prompt_chars` bounds a prompt's text before it is tokenized: `context` tokens of the longest
token's length (no LLaVA tokenizer's normalizer shrinks text).  Vision-tower outputs are cached
by picture content (generation.FeatureCache, `feature_cache_bytes`).
"""

import collections
import dataclasses
import threading
import time

from .. import chat as chat_mod
from ..model import resolve_seed
from ..errors import TgError
from ..generation import FEATURE_CACHE_BYTES, Driver, FeatureCache, Generation, StopTracker


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


class Job(Generation):
    """One generation request (see the module text): a generation.Generation with the server's stop
    strings, streaming switch, prompt size and event sink."""

    def __init__(self, sequence, sink, max_new_tokens=512, temperature=0.0, top_p=1.0, seed=None, stops=(),
                 stream=False, prompt_tokens=0):
        super().__init__(sequence, int(max_new_tokens), float(temperature), float(top_p), seed=resolve_seed(seed),
                         on_token=self._token, on_end=self._ended)
        self.sink, self.stops = sink, [s for s in stops if s]
        self.stream, self.prompt_tokens = bool(stream), int(prompt_tokens)
        self.tracker = None  # its StopTracker, made when the engine admits it
        self.cancelled = self.finished = False

    def _token(self, token):
        hit = self.tracker.push(token)
        if self.stream:
            piece = self.tracker.piece()
            if piece:
                self.sink("piece", piece)
        return hit or self.cancelled

    def _ended(self, _):
        if self.finished:
            return
        self.finished = True
        if self.error is not None:
            self.sink("error", self.error)
        elif not (self.cancelled or self.finish_reason == "cancelled"):
            text = self.tracker.answer()
            rest = self.tracker.last_piece(text)
            if self.stream and rest:
                self.sink("piece", rest)
            self.sink("done", Completion(text, list(self.tokens), self.finish_reason, self.prompt_tokens,
                                         len(self.tokens)))


class Engine:
    """Continuous batching on one model (see the module text)."""

    def __init__(self, model, max_batch=16, context=None, max_queue=64, decode_rows=None,
                 feature_cache_bytes=FEATURE_CACHE_BYTES):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if int(max_queue) < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.model = model
        self.tokenizer = chat_mod.tokenizers(model)[0]
        self.eos_ids = list(self.tokenizer.eos_ids) or model._eos(None)
        self.driver = Driver(model, int(max_batch), context, decode_rows, FeatureCache(model, feature_cache_bytes))
        self.max_batch, self.context, self.max_queue = int(max_batch), self.driver.context, int(max_queue)
        longest_token = max(len(t) for t in map(self.tokenizer.id_to_token, range(self.tokenizer.vocab_size)) if t)
        self.max_prompt_chars = self.context * longest_token
        self._cond = threading.Condition()
        self._pending = collections.deque()
        self._cancels = []
        self._admitting = 0  # jobs taken from the line, not yet in a slot
        self._reserved = 0   # places held by reserve() for requests still being read
        self._closed = False
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
        running = self.running
        taken = len(self._pending) + running + self._admitting + self._reserved
        if taken >= self.max_batch + self.max_queue:
            raise QueueFull(f"the server is busy: {running} requests are running and "
                            f"{taken - running} waiting (--max-batch {self.max_batch}, --max-queue "
                            f"{self.max_queue}); retry later")

    def cancel(self, job):
        """End a job (a client went away): waiting, it is dropped; running, its slot is freed before
        the next decode step."""
        with self._cond:
            if job.finished or job.cancelled:
                return
            job.cancelled = True
            if job in self._pending:
                self._pending.remove(job)
                job.finished = True
            else:
                self._cancels.append(job)
                self._cond.notify_all()

    @property
    def running(self):
        return len(self.driver.running)

    @property
    def waiting(self):
        return len(self._pending)

    def close(self):
        """Stop the worker (running and waiting jobs get an error) and free the scheduler."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self.driver.close()

    # ---- the worker
    def _run(self):
        while True:
            with self._cond:
                while not (self._closed or self._pending or self._cancels or self.driver.running):
                    self._cond.wait()
                if self._closed:
                    break
                cancels, self._cancels = self._cancels, []
                admits = [self._pending.popleft() for _ in range(min(self.driver.free, len(self._pending)))]
                self._admitting = len(admits)
            for job in cancels:
                self.driver.cancel(job)
                job.finished = True
            if admits:
                t0 = time.perf_counter()
                self._admit(admits)
                self.admit_seconds += time.perf_counter() - t0
                with self._cond:
                    self._admitting = 0
            if self.driver.running:
                t0 = time.perf_counter()
                self.driver.step()  # a failed step fails the jobs that were running
                self.steps += 1
                self.step_seconds += time.perf_counter() - t0
        err = TgError("the server is shutting down")
        for job in self._pending:
            job.finished = True
            job.sink("error", err)
        self.driver.close(err)

    def _admit(self, jobs):
        """One admission round: the jobs not cancelled meanwhile go into free slots together."""
        ready = []
        for job in jobs:
            if job.cancelled:
                job.finished = True
            else:
                job.sampling["eos_ids"], job.tracker = self.eos_ids, StopTracker(self.tokenizer, job.stops)
                ready.append(job)
        self.driver.admit(ready)
        for job in ready:
            if job.finish_reason is None:
                job.sink("admitted", job.prompt_tokens)
