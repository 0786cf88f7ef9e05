"""The OpenAI-compatible HTTP face of `tgllava serve` (Starlette app, served by uvicorn):

    POST /v1/chat/completions   chat completions, plain or streamed as server-sent events
    GET  /v1/models             the one model served, by its name (ServeConfig.model_name)
    GET  /health                {"status": "ok", running / waiting counts}; never needs the key

A chat request holds `messages` (system / user / assistant turns; content a string or a list of
`text` and `image_url` parts, at most one image in all, as a `data:image/...;base64,` URL, or a
local path / file:// URL when the server runs with allow_local_files; http(s) URLs are refused:
the server never reaches the network), `max_tokens` or `max_completion_tokens`, `temperature`,
`top_p`, `seed`, `stop` (a string or up to 4), `stream` (+ `stream_options.include_usage`), and the
TG switches `use_fom` / `use_dp` as extra fields; `n` other than 1 is refused.  Whatever `model`
names, the one model served answers with that name (the served name when the request names none),
as clients that check the name expect.  The prompt is built exactly as tgllava.chat builds it (the
model's chat template, "<image>\\n" in front of the turn holding the picture, the CLIP text guide
from that turn), so a greedy answer equals Model.chat's.

Failures come back in OpenAI's error body {"error": {"message", "type", "param", "code"}} with
status 400 (malformed request, bad image, prompt too long, a Host header naming neither a loopback
name nor the configured host), 401 (missing or wrong key when an API key is set), 403 (a browser
Origin not allowed with allow_origins), 404/405 (no such route), 408 (a body that stalls for
read_timeout seconds), 413 (body or image too large), 415 (a POST body not sent as
application/json), 503 (the waiting line is full) or 500 (an internal error, with its message).
The Host, Origin and Content-Type checks keep web pages from using the server through the user's
browser (cross-site requests, DNS rebinding).  A client that goes away (mid-stream or while
waiting for a plain answer) has its job cancelled: its slot is free before the next decode step.

Nothing CPU-heavy runs on the event loop: the JSON body is parsed, the prompt tokenized and the
picture decoded on worker threads, in that order, after the body was read in full (at most
max_body_bytes) and after a place in the waiting line was reserved (a full server answers 503
before any of that work).  The prompt's text is bounded before it is tokenized (no text longer
than Engine.max_prompt_chars fits in the context), picture decodes share a memory budget
(max_decode_bytes: those that would exceed it wait), and the parsed body is dropped once it
became a job.  Each answered request logs one line to the "tgllava.serve.access" logger: client,
request line, status, latency and, for completions, the token counts.
"""

import asyncio
import base64
import binascii
import dataclasses
import contextlib
import hmac
import io
import ipaddress
import json
import logging
import os
import threading
import time
import uuid

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .. import conversation, tokenize
from .. import chat as chat_mod
from .. import image as image_mod
from ..errors import ShapeError, TgError
from ..model import check_sampling
from . import READ_TIMEOUT
from .engine import Job, QueueFull

MAX_BODY_BYTES = 32 << 20    # a request body (JSON with a base64 picture)
MAX_IMAGE_BYTES = 20 << 20   # one encoded picture
MAX_IMAGE_PIXELS = 50_000_000
MAX_DECODE_BYTES = 1 << 30   # picture decodes at once, by their estimated peak memory (_decode_bytes)
MAX_STOPS = 4
MAX_MODEL_NAME = 256         # characters of a request's `model`, which every answer chunk repeats
DEFAULT_MAX_TOKENS = 512     # Model.chat's default
WILDCARD_HOSTS = ("", "0.0.0.0", "::")

access_log = logging.getLogger("tgllava.serve.access")


class ApiError(Exception):
    """An error answered in OpenAI's format (the app's handler answers it with response())."""

    def __init__(self, status, message, param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = ("server_overloaded" if status == 503 else
                     "invalid_request_error" if 400 <= status < 500 else "server_error")

    def body(self):
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self):
        return JSONResponse(self.body(), status_code=self.status)


@dataclasses.dataclass
class ServeConfig:
    """What the app needs besides the engine."""

    model_name: str
    api_key: str = None
    allow_local_files: bool = False
    max_body_bytes: int = MAX_BODY_BYTES
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_decode_bytes: int = MAX_DECODE_BYTES
    read_timeout: float = READ_TIMEOUT
    conv_mode: str = None
    host: str = "127.0.0.1"      # the address served: Host headers may name it (or a loopback name)
    allow_origins: tuple = ()    # browser Origins answered (with CORS headers); "*" for any

    def __post_init__(self):
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty (an unset variable?): give a key, or none to serve without one")
        self.allow_origins = tuple(self.allow_origins or ())


class DecodeBudget:
    """Picture decodes at once, bounded by their estimated memory: `with budget.hold(nbytes):` waits until
    the decodes running leave room.  A decode larger than the whole budget runs alone."""

    def __init__(self, limit):
        self.limit, self.used = int(limit), 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes):
        nbytes = min(nbytes, self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self.used + nbytes <= self.limit)
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


# ---- request parsing (runs in worker threads: JSON, tokenizing and image decoding are CPU work)

def _bad(message, param=None, code=None):
    return ApiError(400, message, param, code)


def parse_json(raw):
    """The JSON value of a request body, or a 400 (malformed, or nested too deeply to parse)."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(f"the request body is not valid JSON ({e})") from None
    except RecursionError:
        raise _bad("the request body is JSON nested too deeply") from None


def _number(body, key, default, integer=False, setting=None):
    """body[key] (`default` when absent or null): a number (an integer with integer=True), checked as the
    sampling `setting` by the model's rule (model.check_sampling) when one is named; or a 400 naming `key`."""
    v = body.get(key, default)
    if v is None:
        return default
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or (not integer and v != v):
        raise _bad(f"'{key}' must be {'an integer' if integer else 'a number'}, got {v!r}", key)
    if setting is not None:
        try:
            check_sampling(**{setting: v}, min_new_tokens=1)
        except ShapeError as e:
            raise _bad(f"'{key}': {e}", key) from None
    return v


def _image_bytes(url, cfg):
    """The encoded bytes behind an image_url."""
    if not isinstance(url, str) or not url:
        raise _bad("image_url.url must be a non-empty string", "messages")
    low = url[:16].lower()
    if low.startswith("data:"):
        head, sep, data = url.partition(",")
        if not sep or ";base64" not in head.lower() or not head.lower().startswith("data:image/"):
            raise _bad("an image data URL must look like data:image/<type>;base64,<data>", "messages")
        if len(data) > cfg.max_image_bytes * 4 // 3 + 4:
            raise ApiError(413, f"the image is larger than {cfg.max_image_bytes} bytes", "messages")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise _bad("the image data URL is not valid base64", "messages") from None
    elif low.startswith(("http://", "https://")):
        raise _bad("remote image URLs are not fetched (the server has no network access): send the picture as a "
                   "data:image/...;base64, URL", "messages", "image_url_not_supported")
    else:
        if not cfg.allow_local_files:
            raise _bad("image_url must be a data:image/...;base64, URL (local paths need the server started with "
                       "--allow-local-files)", "messages")
        path = url[7:] if low.startswith("file://") else url
        if not os.path.isfile(path):
            raise _bad(f"image file {path!r} does not exist on the server", "messages")
        if os.path.getsize(path) > cfg.max_image_bytes:
            raise ApiError(413, f"the image is larger than {cfg.max_image_bytes} bytes", "messages")
        with open(path, "rb") as f:
            raw = f.read()
    if len(raw) > cfg.max_image_bytes:
        raise ApiError(413, f"the image is larger than {cfg.max_image_bytes} bytes", "messages")
    if not raw:
        raise _bad("the image is empty", "messages")
    return raw


def _decode_bytes(w, h):
    """Peak memory of decoding and preprocessing a w x h picture, roughly: PIL holds 4 bytes a pixel, for
    the picture and for the square it may be padded to."""
    return 4 * (w * h + max(w, h) ** 2)


def _pixels(model, raw, cfg, decodes):
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad image
        raise _bad(f"the image cannot be decoded ({type(e).__name__}: {e})", "messages", "invalid_image") from None
    if w * h > cfg.max_image_pixels:
        raise ApiError(413, f"the image has {w}x{h} pixels, more than the limit of {cfg.max_image_pixels}",
                       "messages")
    try:
        with decodes.hold(_decode_bytes(w, h)):
            return image_mod.preprocess_for(model, raw)
    except (TgError, ValueError) as e:
        raise _bad(f"bad image: {e}", "messages", "invalid_image") from None


def _with_system(template, text):
    """The template with its system prompt replaced by `text` (its role markers kept)."""
    if template.style in ("single", "two"):
        return dataclasses.replace(template, system=text)
    if template.style == "header":
        s = template.system
        head = s.split("\n\n", 1)[0] + "\n\n" if "\n\n" in s else s.split("\n", 1)[0] + "\n"
        return dataclasses.replace(template, system=head + text)
    return template  # plain: no system prompt


def _content(message, i):
    """(text, image_url or None) of one message's content."""
    c = message.get("content")
    if c is None or isinstance(c, str):
        return c or "", None
    if not isinstance(c, list):
        raise _bad(f"messages[{i}].content must be a string or a list of parts", "messages")
    texts, image = [], None
    for j, part in enumerate(c):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"messages[{i}].content[{j}] must be an object with a 'type'", "messages")
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise _bad(f"messages[{i}].content[{j}].text must be a string", "messages")
            texts.append(part["text"])
        elif part["type"] == "image_url":
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if image is not None:
                raise _bad("at most one image per request is supported", "messages")
            image = url
        else:
            raise _bad(f"messages[{i}].content[{j}]: unsupported part type {part['type']!r} (text or image_url)",
                       "messages")
    return "\n".join(texts), image


def parse_request(body, engine, cfg, decodes):
    """(a Job without its sink, include_usage, the model name to answer with), or ApiError; pictures are
    decoded within the DecodeBudget `decodes`."""
    model = engine.model
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    model_name = body.get("model")
    if model_name is not None and not isinstance(model_name, str):
        raise _bad(f"'model' must be a string, got {model_name!r}", "model")
    if model_name is not None and len(model_name) > MAX_MODEL_NAME:
        raise _bad(f"'model' is longer than {MAX_MODEL_NAME} characters", "model")
    model_name = model_name or cfg.model_name
    n = body.get("n", 1)
    if n is not None and n != 1:
        raise _bad(f"'n' = {n!r} is not supported: tgllava serve answers one choice per request (n = 1)", "n")
    for key in ("tools", "functions", "logprobs"):
        if body.get(key):
            raise _bad(f"'{key}' is not supported", key)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list", "messages")
    template = conversation.get_template(cfg.conv_mode or chat_mod.default_conv_mode(model))
    turns, image_turn, image_url, chars = [], None, None, 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object", "messages")
        role = m.get("role")
        text, url = _content(m, i)
        chars += len(text)
        if chars > engine.max_prompt_chars:  # before tokenizing: its cost grows with the text
            raise _bad(f"the messages hold more than {engine.max_prompt_chars} characters of text: more than the "
                       f"{engine.context} positions a request may use can hold", "messages",
                       "context_length_exceeded")
        if role in ("system", "developer"):
            if turns or url is not None:
                raise _bad("a system message must come first and hold text only", "messages")
            template = _with_system(template, text)
            continue
        if role not in ("user", "assistant"):
            raise _bad(f"messages[{i}].role {role!r} is not supported (system, user, assistant)", "messages")
        if role != ("user" if len(turns) % 2 == 0 else "assistant"):
            raise _bad("messages must alternate user and assistant turns, starting with user", "messages")
        if url is not None:
            if role != "user" or image_url is not None:
                raise _bad("at most one image per request is supported, in a user message", "messages")
            image_turn, image_url = len(turns), url
        turns.append(text)
    if len(turns) % 2 == 0:
        raise _bad("the last message must be a user message", "messages")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) for s in stops):
        raise _bad(f"'stop' must be a string or a list of at most {MAX_STOPS} strings", "stop")
    temperature = float(_number(body, "temperature", 0.0, setting="temperature"))
    top_p = float(_number(body, "top_p", 1.0, setting="top_p"))
    seed = _number(body, "seed", None, integer=True)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, None, integer=True, setting="max_new_tokens")
    flags = {}
    for key in ("use_fom", "use_dp", "stream"):
        v = body.get(key, key != "stream")
        if not isinstance(v, bool):
            raise _bad(f"'{key}' must be true or false", key)
        flags[key] = v
    so = body.get("stream_options") or {}
    if not isinstance(so, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    include_usage = bool(so.get("include_usage", False))

    # the prompt, as tgllava.chat builds it
    llm_tok, clip_tok = chat_mod.tokenizers(model)
    rendered = [conversation.user_message(t, 1) if i == image_turn else t for i, t in enumerate(turns)]
    prompt = template.render(rendered + [None])
    input_ids = tokenize.tokenizer_image_token(prompt, llm_tok)
    slots = input_ids.count(tokenize.IMAGE_TOKEN_INDEX)
    if slots != (1 if image_url is not None else 0):
        raise _bad(f"the prompt has {slots} image slots for {1 if image_url is not None else 0} images: write the "
                   "text without a literal '<image>'", "messages")
    pixels = text_ids = None
    if image_url is not None:
        pixels = _pixels(model, _image_bytes(image_url, cfg), cfg, decodes)
        if model.has_tg and (flags["use_fom"] or flags["use_dp"]):
            text_ids = clip_tok.encode(chat_mod.text_guide(turns[image_turn]))
    try:
        seq = model._sequence(input_ids, pixels, text_ids, flags["use_fom"], flags["use_dp"])
    except ShapeError as e:
        raise _bad(str(e), "messages") from None
    n_prompt = len(input_ids)
    if pixels is not None:
        n_prompt += model.visual_token_count(flags["use_dp"]) - 1
    room = engine.context - n_prompt
    if max_tokens is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, room)
    if room < 1 or max_tokens > room:
        raise _bad(f"the prompt takes {n_prompt} positions (with the picture's visual tokens) and max_tokens asks "
                   f"for {max_tokens}: more than the {engine.context} positions a request may use", "messages",
                   "context_length_exceeded")
    job = Job(seq, None, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
              stops=conversation.stop_strings(template.name) + stops, stream=flags["stream"], prompt_tokens=n_prompt)
    return job, include_usage, model_name


# ---- the app

def _host_name(header):
    """The name a Host header gives, lower case, without its port or IPv6 brackets."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")]
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _is_loopback(name):
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def create_app(engine, cfg):
    """The Starlette app serving `engine` (an Engine) with settings `cfg` (a ServeConfig)."""
    decodes = DecodeBudget(cfg.max_decode_bytes)
    served_host = cfg.host.strip("[]").lower()

    def check_allowed(request, needs_key=True, json_body=False):
        """Raise the ApiError answering a request the server must not serve."""
        host = request.headers.get("host")
        if host is not None and served_host not in WILDCARD_HOSTS and not _is_loopback(_host_name(host)) \
                and _host_name(host) != served_host:
            raise ApiError(400, f"Host {host!r} is not this server's: use a loopback name or {cfg.host}",
                           None, "invalid_host")
        origin = request.headers.get("origin")
        if origin is not None and origin not in cfg.allow_origins and "*" not in cfg.allow_origins:
            raise ApiError(403, f"requests from web pages ({origin}) are refused: start the server with "
                                f"--allow-origin {origin} to answer them", None, "origin_not_allowed")
        if needs_key and cfg.api_key and not authorised(request):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')", None,
                           "invalid_api_key")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if json_body and content_type != "application/json":
            raise ApiError(415, "the request body must be sent as 'Content-Type: application/json'", None,
                           "unsupported_media_type")

    def authorised(request):
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), cfg.api_key.encode())

    async def read_body(request):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
            raise ApiError(413, f"the request body is larger than {cfg.max_body_bytes} bytes")
        body, stream = bytearray(), request.stream()
        while True:
            try:
                body += await asyncio.wait_for(stream.__anext__(), cfg.read_timeout)
            except StopAsyncIteration:
                return bytes(body)
            except asyncio.TimeoutError:
                raise ApiError(408, f"the request body stalled for {cfg.read_timeout:g} s") from None
            if len(body) > cfg.max_body_bytes:
                raise ApiError(413, f"the request body is larger than {cfg.max_body_bytes} bytes")

    async def read_job(request):
        """The request's Job, include_usage and model name, holding a place in the engine's line (a 503
        when none is left, checked before any CPU work); the body exists only in here."""
        raw = await read_body(request)
        try:
            engine.reserve()
        except QueueFull as e:
            raise ApiError(503, str(e), None, "queue_full") from None
        try:
            body = await run_in_threadpool(parse_json, raw)
            del raw
            return await run_in_threadpool(parse_request, body, engine, cfg, decodes)
        except BaseException:
            engine.release()
            raise

    async def health(request):
        check_allowed(request, needs_key=False)
        return JSONResponse({"status": "ok", "model": cfg.model_name, "running": engine.running,
                             "waiting": engine.waiting, "slots": engine.max_batch})

    async def models(request):
        check_allowed(request)
        return JSONResponse({"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": 0,
                                                         "owned_by": "tgllava"}]})

    async def completions(request):
        check_allowed(request, json_body=True)
        job, include_usage, model_name = await read_job(request)
        loop = asyncio.get_running_loop()
        events = asyncio.Queue()
        job.sink = lambda kind, value: loop.call_soon_threadsafe(events.put_nowait, (kind, value))
        engine.submit(job, reserved=True)
        rid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
        disconnected = asyncio.ensure_future(_wait_disconnect(request))
        try:  # a plain answer is awaited here whole, a streamed one until it is admitted (or failed)
            kind, value = await _next_event(events, disconnected)
            while not job.stream and kind not in ("done", "error"):
                kind, value = await _next_event(events, disconnected)
        except _Gone:
            engine.cancel(job)
            raise ApiError(400, "the client went away") from None
        finally:
            disconnected.cancel()  # from here Starlette's StreamingResponse watches the connection
        if kind == "error":
            raise _job_error(value)
        if not job.stream:
            request.state.usage = value
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": value.text},
                             "finish_reason": _reason(value.finish_reason), "logprobs": None}],
                "usage": _usage(value)})

        def chunk(delta, finish=None, usage=None, choices=True):
            out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if choices else []}
            if usage is not None:
                out["usage"] = usage
            return "data: " + json.dumps(out) + "\n\n"

        async def sse():
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    kind, value = await events.get()
                    if kind == "piece":
                        yield chunk({"content": value})
                    elif kind == "done":
                        request.state.usage = value
                        yield chunk({}, _reason(value.finish_reason))
                        if include_usage:
                            yield chunk(None, usage=_usage(value), choices=False)
                        break
                    elif kind == "error":
                        yield "data: " + json.dumps(_job_error(value).body()) + "\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:
                engine.cancel(job)  # nothing when it finished; a client gone mid-stream frees its slot

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def api_error(request, exc):
        return exc.response()

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        return ApiError(status, f"{request.method} {request.url.path}: "
                                f"{'no such endpoint' if status == 404 else exc.detail}").response()

    async def internal(request, exc):
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}").response()

    routes = [Route("/v1/chat/completions", completions, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/health", health, methods=["GET"])]
    middleware = [Middleware(AccessLog)]
    if cfg.allow_origins:  # browsers need CORS answers (preflight included) to use the origins allowed
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cfg.allow_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]))
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={ApiError: api_error, HTTPException: not_found, Exception: internal})
    app.state.config = cfg
    return app


class AccessLog:
    """ASGI middleware: one line per HTTP request to the "tgllava.serve.access" logger, once its answer
    ended: client, request line, status, seconds taken and, for completions, the token counts."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), 500  # 500 unless an answer starts (an exception escapes)
        state = scope.setdefault("state", {})  # the completion's Completion lands in state["usage"]

        async def send_noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            client = "%s:%d" % tuple(scope["client"][:2]) if scope.get("client") else "-"
            usage = state.get("usage")
            tokens = f" prompt_tokens={usage.prompt_tokens} completion_tokens={usage.completion_tokens}" \
                if usage is not None else ""
            access_log.info('%s "%s %s HTTP/%s" %d %.3fs%s', client, scope["method"], scope["path"],
                            scope["http_version"], status, time.perf_counter() - t0, tokens)


class _Gone(Exception):
    pass


async def _wait_disconnect(request):
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _next_event(events, disconnected):
    get = asyncio.ensure_future(events.get())
    done, _ = await asyncio.wait({get, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    if get in done:
        return get.result()
    get.cancel()
    raise _Gone()


def _reason(finish):
    return "length" if finish == "length" else "stop"


def _usage(c):
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def _job_error(exc):
    """The ApiError of a failed job: a ShapeError is the request's fault (400), others the server's (500)."""
    return ApiError(400 if isinstance(exc, ShapeError) else 500, str(exc) or type(exc).__name__)
