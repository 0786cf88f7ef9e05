"""Streaming: one generation in a worker thread, its tokens handed to the reader as they come.

`TokenStream(model, run)` is the one thread-and-queue loop of the package (Model.generate_stream
and chat's AnswerStream use it).  `run(callback)` performs the generation in a worker thread,
calling `callback(token)` for every new token and stopping when it returns True; its return
value becomes `stream.tokens` once the stream is exhausted.  `on_token(token)`, if given, sees
every token in the worker first; a true result stops the generation (chat: at a stop string).

The look-ahead is bounded: the worker waits once `lookahead` tokens are unread, so a stream no
longer read does not keep computing.  While it waits it still holds the model (the C core runs
one call at a time per model), so an abandoned stream must not block everyone else: when another
call on the model is waiting and the unread tokens have stayed at the bound for `grace` seconds,
the worker gives the model up and the stream, after the tokens it holds, raises StreamCancelled.
Closing the stream (close(), `break` out of a for loop over it, or dropping it) stops it too.

"Another call is waiting" is counted by `CountedCore`, a thin wrapper that Model puts around its
C core: every method call on it counts while it runs or waits for the model's lock.  A model
without that counter (a test fake) never sees a waiting caller.
"""

import collections
import threading
import time

from .errors import TgError

LOOKAHEAD = 8      # unread tokens the worker may run ahead of the reader
GRACE = 0.25       # seconds a full stream is left alone while another call waits for the model
_POLL = 0.02       # how often a waiting worker looks at the model's other callers

_END = object()


class StreamCancelled(TgError):
    """A stream that was not being read gave its model up to another call before it finished."""


class _Counted:
    """An object whose method calls are counted in a CountedCore's counter while they run."""

    def __init__(self, obj, counter):
        self._obj, self._counter = obj, counter

    def __getattr__(self, name):
        attr = getattr(self._obj, name)
        if not callable(attr):
            return attr
        counter = self._counter

        def counted(*args, **kwargs):
            with counter._lock:
                counter.calls_in_flight += 1
            try:
                return attr(*args, **kwargs)
            finally:
                with counter._lock:
                    counter.calls_in_flight -= 1

        counted.__name__ = name
        counted.__doc__ = getattr(attr, "__doc__", None)
        return counted


class CountedCore(_Counted):
    """The C model with `calls_in_flight`, a count of the method calls running or waiting for its lock;
    `_core` is the C model itself (for what takes it as an argument, such as _C.Scheduler).
    `counted(obj)` wraps another object that takes the same lock (the model's _C.Scheduler), so
    its calls are counted too."""

    def __init__(self, core):
        super().__init__(core, self)
        self._core = core
        self._lock = threading.Lock()
        self.calls_in_flight = 0

    def counted(self, obj):
        return _Counted(obj, self)


def _others_waiting(model):
    """Calls on `model`'s core besides the one this stream's worker is making."""
    core = getattr(model, "_core", None)
    return getattr(core, "calls_in_flight", 1) - 1


class _Channel:
    """What the worker and the reader share: unread tokens, the end, the stop request."""

    def __init__(self, lookahead):
        self.cond = threading.Condition()
        self.items = collections.deque()
        self.lookahead = lookahead
        self.stop = False        # the reader closed the stream
        self.cancelled = False   # the worker gave the model up to another call
        self.end = None          # _END, or the exception the worker raised
        self.tokens = None


def _worker(ch, model, run, on_token, grace):
    def callback(token):
        hit = bool(on_token(token)) if on_token is not None else False
        with ch.cond:
            full_since = None
            while len(ch.items) >= ch.lookahead and not ch.stop:
                if _others_waiting(model) > 0:
                    now = time.monotonic()
                    full_since = full_since or now
                    if now - full_since >= grace:
                        ch.cancelled = True
                        return True
                else:
                    full_since = None
                ch.cond.wait(_POLL)
            if ch.stop:
                return True
            ch.items.append(token)
            ch.cond.notify_all()
        return hit

    tokens = None
    try:
        tokens, end = run(callback), _END
    except BaseException as e:  # noqa: BLE001 - handed to the reader
        end = e
    with ch.cond:
        ch.tokens, ch.end = tokens, end
        ch.cond.notify_all()


def _read(ch, worker):
    try:
        while True:
            with ch.cond:
                ch.cond.wait_for(lambda: ch.items or ch.end is not None)
                if ch.items:
                    token = ch.items.popleft()
                    ch.cond.notify_all()
                else:
                    end = ch.end
                    break
            yield token
        if end is not _END:
            raise end
        if ch.cancelled:
            raise StreamCancelled(
                f"the stream stopped after {len(ch.tokens or [])} tokens: it was not being read while another "
                "call needed the model (read a stream to its end, or close it, before using the model again)")
    finally:
        with ch.cond:
            ch.stop = True
            ch.cond.notify_all()
        worker.join()


class TokenStream:
    """Iterator over the tokens `run(callback)` generates in a worker thread (see the module text).

    `tokens` holds run's return value once the iteration has ended; `cancelled` says whether
    the worker gave the model up to another call.
    """

    def __init__(self, model, run, on_token=None, lookahead=LOOKAHEAD, grace=GRACE):
        if lookahead < 1:
            raise ValueError(f"lookahead must be at least 1, got {lookahead}")
        self._ch = _Channel(int(lookahead))
        self._worker = threading.Thread(target=_worker, args=(self._ch, model, run, on_token, float(grace)),
                                        daemon=True, name="tgllava-stream")
        self._gen = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._gen is None:  # the worker starts with the first read, as a generator would
            self._worker.start()
            self._gen = _read(self._ch, self._worker)
        return next(self._gen)

    def close(self):
        """Stop the generation (if it runs) and wait for the worker."""
        if self._gen is not None:
            self._gen.close()
        else:
            self._ch.stop = True

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - nothing to report to at interpreter exit
            pass

    @property
    def tokens(self):
        return self._ch.tokens

    @property
    def cancelled(self):
        return self._ch.cancelled
