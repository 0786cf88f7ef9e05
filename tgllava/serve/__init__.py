"""`tgllava serve`: an OpenAI-compatible chat-completions server with continuous batching.

    tgllava serve --model LLM_DIR [--clip CLIP_DIR] [--port 8000] ...     (tgllava serve --help: all options)

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")

Pieces: engine.py (Engine: a worker thread running tgllava.generation's Driver on the C
scheduler, which admits requests into KV-cache slots between decode steps and advances every
running one per step), app.py (the Starlette app: the protocol, its errors and limits) and, here,
the command line and `ServerThread`, which runs the app with uvicorn in a background thread
(tests, benchmarks, notebooks).  The HTTP part needs the extra: pip install "tgllava[serve]".

Idle and slow clients cannot hold the server: a connection must deliver each request's headers
within read_timeout seconds (from connecting, or from its previous answer; uvicorn itself only
times out idle connections after an answer, keep_alive_timeout), and past max_connections open
connections requests are answered 503.  The API key can come from $TGLLAVA_API_KEY instead of
--api-key (command lines are visible to every user in `ps`); an empty key is an error, not "no key".
"""

import contextlib
import logging
import os
import sys
import threading

from .. import _C
from .engine import Completion, Engine, Job, QueueFull

__all__ = ["Engine", "Job", "Completion", "QueueFull", "ServerThread", "serve_model", "add_subparser"]


def _need_extra():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        from ..errors import TgError
        raise TgError(f"tgllava serve needs the 'serve' extra ({e.name} is missing): pip install 'tgllava[serve]'") \
            from None


API_KEY_VARIABLE = "TGLLAVA_API_KEY"
READ_TIMEOUT = 20            # seconds for a request's headers, and the longest pause inside its body
KEEP_ALIVE_TIMEOUT = 5       # seconds an idle connection stays open after an answer (uvicorn's default)
MAX_CONNECTIONS = 512        # open connections; past them requests get 503 (below the usual 1024 open files)


def build_app(model, max_batch=16, model_name=None, max_queue=64, context=None, **settings):
    """(Starlette app, Engine) serving a loaded tgllava.Model; `settings` are further ServeConfig fields
    (api_key, allow_local_files, conv_mode, host, allow_origins, read_timeout, max_body_bytes, ...)."""
    _need_extra()
    from .app import ServeConfig, create_app

    cfg = ServeConfig(model_name or _model_name(model), **settings)
    engine = Engine(model, max_batch=max_batch, context=context, max_queue=max_queue)
    return create_app(engine, cfg), engine


def _model_name(model):
    """The name served by default: the checkpoint folder's, the one holding the LLM folder when that is named
    `llm` (the layout of `tgllava demo --keep DIR`: DIR/llm and DIR/clip)."""
    folder = os.path.abspath(model.llm_dir)
    if os.path.basename(folder) == "llm":
        folder = os.path.dirname(folder)
    return os.path.basename(folder) or "tgllava"


class ServerThread:
    """The app of `model` served by uvicorn in a daemon thread: `.url` (http://host:port), `.engine`,
    `.stop()`.  port=0 picks a free port; `kw` go to build_app.  Also a context manager."""

    def __init__(self, model, host="127.0.0.1", port=0, keep_alive_timeout=KEEP_ALIVE_TIMEOUT,
                 max_connections=MAX_CONNECTIONS, **kw):
        import uvicorn
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        self.app, self.engine = build_app(model, host=host, **kw)
        read_timeout = self.app.state.config.read_timeout
        # uvicorn answers 503 once its connections, the asking one included, reach limit_concurrency
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", lifespan="off",
                                access_log=False, timeout_keep_alive=keep_alive_timeout,
                                limit_concurrency=max_connections + 1,
                                http=_with_header_timeout(AutoHTTPProtocol, read_timeout))
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tgllava-serve", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                self.engine.close()
                raise OSError(f"the server could not start on {host}:{port}")
            self._thread.join(0.02)
        sock = self._server.servers[0].sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"

    def _run(self):
        try:
            self._server.run()
        finally:
            self._stopped.set()

    def wait(self, timeout=None):
        """True once the server stopped.  (Unlike Thread.join, safe to interrupt with Ctrl-C and call again:
        on Python < 3.13 a join interrupted so returns at once afterwards, cutting off requests in flight.)"""
        return self._stopped.wait(timeout)

    def stop(self):
        self._server.should_exit = True
        self.wait()
        self._thread.join()
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _with_header_timeout(protocol_class, seconds):
    """uvicorn's HTTP protocol class, closing a connection that has not sent a request's headers within
    `seconds` of connecting or of its previous answer (slowloris: uvicorn waits forever for them)."""

    class HeaderTimeoutProtocol(protocol_class):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._expect_headers()

        def on_response_complete(self):
            self._expect_headers()  # first: a pipelined request may start in super()
            super().on_response_complete()

        def connection_lost(self, exc):
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _expect_headers(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(seconds, self._close_if_no_request, self.cycle)

        def _close_if_no_request(self, cycle_then):
            if self.cycle is cycle_then and not self.transport.is_closing():  # no new request since
                self.transport.close()

    return HeaderTimeoutProtocol


def add_subparser(sub):
    """Register `tgllava serve` on an argparse subparsers object; returns the parser."""
    from ..cli import add_options, command_parser

    p = command_parser(
        sub, "serve", "serve a model over an OpenAI-compatible HTTP API",
        "Serve a TG-LLaVA / LLaVA-1.5 checkpoint over the OpenAI chat-completions API (POST /v1/chat/completions, "
        "GET /v1/models, GET /health) with continuous batching, until Ctrl-C.  Answers carry the model name the "
        "client asked for.  Needs the extra: pip install 'tgllava[serve]'.",
        ["tgllava serve --model demo/llm --port 8000",
         "tgllava serve --model LLM_DIR --clip CLIP_DIR --device cuda --served-model-name tg-llava-7b"], run)
    add_options(p, "--model", "--clip")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    add_options(p, "--device", "--dtype")
    p.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="requests decoded together (KV-cache slots, default 16)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests waiting for a slot before the server answers 503 (default 64)")
    p.add_argument("--context", type=int, default=None, metavar="N",
                   help="positions per slot, prompt with visual tokens + answer (default: the model's context)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_VARIABLE} if set, which "
                        "keeps the key out of `ps`; else no key).  An empty key is an error")
    p.add_argument("--allow-local-files", action="store_true",
                   help="accept image_url values naming files on the server")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="answer browser requests from this web origin (e.g. http://localhost:3000; '*' for any), "
                        "with CORS headers; repeatable.  Default: requests with an Origin header get 403, so web "
                        "pages cannot use the server through a browser.  Host headers must name a loopback "
                        "address or --host (any, with --host 0.0.0.0 or ::)")
    p.add_argument("--read-timeout", type=float, default=READ_TIMEOUT, metavar="S",
                   help="seconds a client has to send a request's headers (from connecting, or from its previous "
                        f"answer), and the longest pause inside a request body (default {READ_TIMEOUT})")
    p.add_argument("--keep-alive-timeout", type=float, default=KEEP_ALIVE_TIMEOUT, metavar="S",
                   help=f"seconds an idle connection stays open after an answer (default {KEEP_ALIVE_TIMEOUT})")
    p.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, metavar="N",
                   help=f"open connections served at once; past them requests get 503 (default {MAX_CONNECTIONS})")
    p.add_argument("--image-memory", type=int, default=1024, metavar="MIB",
                   help="memory for decoding pictures at once, estimated from their sizes; decodes that would "
                        "exceed it wait (default 1024; a larger picture is decoded alone)")
    p.add_argument("--no-access-log", action="store_true",
                   help="do not log a line per request (client, request, status, seconds, tokens) to stderr")
    add_options(p, "--conv-mode")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model id /v1/models lists and answers carry when a request names no model (default: "
                        "the checkpoint folder's name; for DIR/llm, DIR's)")
    return p


def run(args):
    """`tgllava serve`: load, then serve until Ctrl-C."""
    _need_extra()
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_VARIABLE)
    checks = [  # (bad, what to say), in the order they are reported
        (not 1 <= args.max_batch <= _C.MAX_BATCH, f"--max-batch must be between 1 and {_C.MAX_BATCH}"),
        (args.max_queue < 0, "--max-queue must be >= 0"),
        (not 0 <= args.port <= 65535, "--port must be between 0 and 65535"),
        (api_key is not None and not api_key.strip(),
         f"{'--api-key' if args.api_key is not None else '$' + API_KEY_VARIABLE} is empty (an unset "
         "variable?): give a key, or leave it out to serve without one"),
        (args.read_timeout <= 0 or args.keep_alive_timeout <= 0,
         "--read-timeout and --keep-alive-timeout must be > 0"),
        (args.max_connections < 1, "--max-connections must be >= 1"),
        (args.image_memory < 1, "--image-memory must be >= 1")]
    for bad, message in checks:
        if bad:
            raise ValueError(message)
    from ..cli import load_model

    model = load_model(args, args.dtype)
    serve_model(model, host=args.host, port=args.port, max_batch=args.max_batch, api_key=api_key,
                allow_local_files=args.allow_local_files, model_name=args.served_model_name, max_queue=args.max_queue,
                context=args.context, conv_mode=args.conv_mode, allow_origins=args.allow_origin,
                read_timeout=args.read_timeout, keep_alive_timeout=args.keep_alive_timeout,
                max_connections=args.max_connections, max_decode_bytes=args.image_memory << 20,
                access_log=not args.no_access_log)
    return 0


def serve_model(model, host="127.0.0.1", port=8000, access_log=True, **kw):
    """Serve a loaded model in the foreground until Ctrl-C (what `tgllava serve` does after loading);
    the address goes to stderr once the server listens, and with access_log a line per request."""
    if access_log:
        log = logging.getLogger("tgllava.serve.access")
        log.setLevel(logging.INFO)
        log.addHandler(logging.StreamHandler(sys.stderr))
    server = ServerThread(model, host=host, port=port, **kw)
    print(f"tgllava serve: listening on {server.url}/v1", file=sys.stderr, flush=True)
    with server, contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop cleanly
        server.wait()
