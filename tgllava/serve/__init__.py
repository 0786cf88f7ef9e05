"""`tgllava serve`: an OpenAI-compatible chat-completions server with continuous batching.

    tgllava serve --model LLM_DIR [--clip CLIP_DIR] [--host 127.0.0.1] [--port 8000]
                  [--device cpu] [--dtype ...] [--max-batch 16] [--api-key KEY] [--allow-local-files]

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")

Pieces: engine.py (Engine: a worker thread driving the C scheduler, _C.Scheduler, which admits
requests into KV-cache slots between decode steps and advances every running one per step),
app.py (the Starlette app: the protocol, its errors and limits) and, here, the command line and
`ServerThread`, which runs the app with uvicorn in a background thread (tests, benchmarks,
notebooks).  The HTTP part needs the optional extra: pip install "tgllava[serve]".
"""

import threading

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


def build_app(model, max_batch=16, api_key=None, allow_local_files=False, model_name=None, max_queue=64,
              context=None, conv_mode=None, **limits):
    """(Starlette app, Engine) serving a loaded tgllava.Model."""
    _need_extra()
    from .app import ServeConfig, create_app

    engine = Engine(model, max_batch=max_batch, context=context, max_queue=max_queue)
    cfg = ServeConfig(model_name or _model_name(model), api_key=api_key, allow_local_files=allow_local_files,
                      conv_mode=conv_mode, **limits)
    return create_app(engine, cfg), engine


def _model_name(model):
    import os
    return os.path.basename(os.path.normpath(model.llm_dir)) or "tgllava"


class ServerThread:
    """The app of `model` served by uvicorn in a daemon thread: `.url` (http://host:port), `.engine`,
    `.stop()`.  port=0 picks a free port.  Also a context manager."""

    def __init__(self, model, host="127.0.0.1", port=0, **kw):
        import uvicorn

        self.app, self.engine = build_app(model, **kw)
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="tgllava-serve", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                self.engine.close()
                raise OSError(f"the server could not start on {host}:{port}")
            self._thread.join(0.02)
        sock = self._server.servers[0].sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"

    def stop(self):
        self._server.should_exit = True
        self._thread.join()
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def add_subparser(sub):
    """Register `tgllava serve` on an argparse subparsers object; returns the parser."""
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description="Serve a TG-LLaVA / LLaVA-1.5 checkpoint over the OpenAI chat-completions API "
                                   "(POST /v1/chat/completions, GET /v1/models, GET /health) with continuous "
                                   "batching.  Needs the extra: pip install 'tgllava[serve]'.")
    p.add_argument("--model", required=True, metavar="DIR", help="LLM checkpoint folder")
    p.add_argument("--clip", metavar="DIR", default=None, help="CLIP tower folder (default: from the config)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16", "int8", "int4"),
                   help="weight storage (default as for tgllava generate)")
    p.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="requests decoded together (KV-cache slots, default 16)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests waiting for a slot before the server answers 503 (default 64)")
    p.add_argument("--context", type=int, default=None, metavar="N",
                   help="positions per slot, prompt with visual tokens + answer (default: the model's context)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: no key)")
    p.add_argument("--allow-local-files", action="store_true",
                   help="accept image_url values naming files on the server")
    p.add_argument("--conv-mode", default=None, metavar="NAME", help="chat template (default: from the config)")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the model id /v1/models reports (default: the folder's name)")
    p.set_defaults(func=run)
    return p


def run(args):
    """`tgllava serve`: load, then serve until Ctrl-C."""
    _need_extra()
    if args.max_batch < 1 or args.max_batch > 256:
        raise ValueError("--max-batch must be between 1 and 256")
    if args.max_queue < 0:
        raise ValueError("--max-queue must be >= 0")
    if not 0 <= args.port <= 65535:
        raise ValueError("--port must be between 0 and 65535")
    if args.conv_mode is not None:
        from .. import conversation
        conversation.get_template(args.conv_mode)
    from ..cli import load_model

    model = load_model(args.model, args.clip, args.device, args.dtype, preflight=True)
    serve_model(model, host=args.host, port=args.port, max_batch=args.max_batch, api_key=args.api_key,
                allow_local_files=args.allow_local_files, model_name=args.model_name, max_queue=args.max_queue,
                context=args.context, conv_mode=args.conv_mode)
    return 0


def serve_model(model, host="127.0.0.1", port=8000, **kw):
    """Serve a loaded model in the foreground until Ctrl-C (what `tgllava serve` does after loading);
    the address goes to stderr once the server listens."""
    import sys

    server = ServerThread(model, host=host, port=port, **kw)
    print(f"tgllava serve: listening on {server.url}/v1", file=sys.stderr, flush=True)
    try:
        while server._thread.is_alive():
            server._thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
