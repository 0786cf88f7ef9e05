"""The evaluation loop: batched inference, resume, shards, merge, scoring.

`run(model, data)` evaluates one dataset (or a list of them):

1. load the TSV (data.py), keep the first `limit` rows, and take this
   process's part of them (shard.py: explicit shard or launcher env);
2. lock this process's `Checkpoint` - an append-only JSON-lines file
   ``<model>_<dataset>_infer[_shard<i>of<n>].jsonl`` in ``work_dir/<model>/``
   - for the whole run, and skip every row that the checkpoints already
   written for this model and dataset answer;
3. run the rest - a tgllava.Model through its eval adapter's
   ``answer_stream`` (adapter.py: continuous batching, a finished answer's
   slot taken by the next row at once), any other model through its
   ``chat_batch`` in batches - with rows that share a picture next to each
   other (the adapter's vision cache, keyed by ``image_key``, sees repeats
   at once) and the next batch's images decoded on a helper thread.
   Answers are checkpointed ``batch_size`` at a time, so a killed run loses
   at most a batch of them.  A bad row (its picture cannot be decoded or
   found) is recorded as failed, with the reason, and retried by the next run;
4. when every row of the dataset has an answer or failed (for shards: in
   all their checkpoints), write ``<model>_<dataset>.<fmt>`` (xlsx as
   VLMEvalKit's, unless `pred_format` or $PRED_FORMAT asks for tsv or json)
   - the dataset's columns but `image`, plus `prediction` (empty for a
   failed row) - and score it (scoring.py), unless rows failed (the result
   lists them) or the dataset has no `answer` column (inference only, as in
   VLMEvalKit).  One shard process does this under a lock file (holding its
   pid and host; a lock whose process is dead, or older than
   STALE_LOCK_SECONDS, is taken over); `merge` does it on demand.

Because the final files are built from the union of the checkpoints and
nothing else, a single process, any number of shards plus a merge, any
batch size and any number of restarts all produce the same bytes.
A checkpoint records every setting that changes an answer (settings.py);
resuming from or merging files made with other settings is refused, naming
the setting.
"""

import collections
import contextlib
import fcntl
import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from .adapter import as_eval_model
from .data import load_dataset
from .errors import DatasetError, EvalError, ShardError
from .prompts import PROMPT_STYLES, build_item_prompt, default_conv_mode
from .judge import judge_name, make_judge
from .scoring import score, unscored_result
from .settings import describe_mismatch, run_settings
from .shard import detect_shard, partition
from .tables import PRED_FORMATS, check_format_available, write_table

CHECKPOINT_VERSION = 2


# ------------------------------------------------------------ small helpers

def model_name_of(model):
    """A file-name-safe name for a model object: .name, else its config's path."""
    name = getattr(model, "name", None)
    if not name and getattr(model, "llm_dir", None):
        name = os.path.basename(os.path.normpath(model.llm_dir))
    if not name:
        config = getattr(model, "config", None) or {}
        if isinstance(config, dict):
            path = config.get("_name_or_path") or config.get("name_or_path") or ""
            name = os.path.basename(os.path.normpath(path)) if path else None
    return safe_name(name or "tgllava")


def safe_name(name):
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(name)) or "model"


def resolve_pred_format(fmt=None):
    """xlsx (default, as VLMEvalKit's), tsv or json ($PRED_FORMAT when not given), checked before any
    work: xlsx without openpyxl (a broken install) is a DatasetError here, not after the inference."""
    fmt = (fmt or os.environ.get("PRED_FORMAT") or "xlsx").lower()
    if fmt not in PRED_FORMATS:
        raise ValueError(f"prediction format {fmt!r}: expected one of {', '.join(PRED_FORMATS)}")
    check_format_available(fmt)
    return fmt


def predictions_path(work_dir, model_name, dataset_name, fmt):
    return os.path.join(work_dir, model_name, f"{model_name}_{dataset_name}.{fmt}")


def checkpoint_path(work_dir, model_name, dataset_name, rank=0, world=1):
    base = os.path.join(work_dir, model_name, f"{model_name}_{dataset_name}_infer")
    return f"{base}.jsonl" if world == 1 else f"{base}_shard{rank}of{world}.jsonl"


# ------------------------------------------------------------ checkpoints

class Checkpoint:
    """An append-only JSON-lines file: a header, then {"index", "prediction"} lines, and
    {"index", "failed"} lines for bad rows (a reason; the next run retries them).

    open() locks the file for the run's lifetime (flock: the kernel drops it when the process
    ends, however it ends); a second run on the same file is refused at once.  The header is
    written with the first records.
    """

    def __init__(self, path, header):
        self.path = path
        self.header = header
        self._f = None

    def open(self):
        f = open(self.path, "a", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise EvalError(
                f"another tgllava eval is running on {self.path} (same work dir, model name, dataset and "
                "shard); wait for it to finish, or give this run another work_dir / --work-dir or "
                "model_name / --model-name") from None
        self._f = f
        _repair_tail(self.path)  # may cut a header torn by a kill down to nothing

    def append(self, answers, failures=()):
        """Record (index, prediction) pairs and (index, reason) pairs of failed rows."""
        records = ([{"index": idx, "prediction": pred} for idx, pred in answers]
                   + [{"index": idx, "failed": reason} for idx, reason in failures])
        if records and os.fstat(self._f.fileno()).st_size == 0:
            records.insert(0, self.header)
        if records:
            self._write(records)

    def _write(self, records):
        self._f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self):
        if self._f is not None:
            self._f.close()  # releases the lock
            self._f = None


def _repair_tail(path):
    """Cut a last line left incomplete by a kill, so appends start on a fresh line."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_checkpoint(path):
    """(header, {index: prediction}, {index: reason failed}) of one checkpoint; a torn last line is ignored."""
    header, preds, failures = None, {}, {}
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # being written or cut by a kill
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if header is None:
                if not isinstance(rec, dict) or "tgllava_eval_checkpoint" not in rec:
                    raise ShardError(f"{path} is not a tgllava eval checkpoint")
                header = rec
                continue
            if isinstance(rec, dict) and "index" in rec:
                if "prediction" in rec:
                    preds.setdefault(str(rec["index"]), rec["prediction"])
                elif "failed" in rec:
                    failures[str(rec["index"])] = str(rec["failed"])  # the latest try's reason
    return header, preds, failures


def find_checkpoints(work_dir, model_name, dataset_name):
    """All checkpoint files of a model and dataset (single-process and shards)."""
    folder = os.path.join(work_dir, model_name)
    if not os.path.isdir(folder):
        return []
    pat = re.compile(re.escape(f"{model_name}_{dataset_name}_infer") + r"(_shard\d+of\d+)?\.jsonl$")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if pat.match(f))


def collect_predictions(paths, settings=None):
    """Union of the predictions in checkpoint files made with `settings` (None: the first file's).

    Returns (settings, limits, {index: prediction}, {index: reason} of the
    rows that failed and have no prediction in any file); the first file in
    path order wins where two hold the same row.  A file made with other
    settings is a ShardError naming the first setting that differs.
    """
    preds, failures, limits = {}, {}, set()
    settings_of = "this run"
    for path in paths:
        header, got, failed = read_checkpoint(path)
        if header is None:
            continue
        if settings is None:
            settings, settings_of = header.get("settings"), path
        elif header.get("settings") != settings:
            raise ShardError(describe_mismatch(path, header.get("settings"), settings, settings_of))
        limits.add(header.get("limit"))
        preds.update({k: v for k, v in got.items() if k not in preds})  # the first file wins
        failures.update(failed)
    return settings, limits, preds, {k: v for k, v in failures.items() if k not in preds}


# ------------------------------------------------------------ the loop

def _build_items(dataset, positions, style, conv_mode):
    """([(position, item)], [(position, reason)]): the rows' items, and the bad rows (no usable picture)."""
    ready, bad = [], []
    for p in positions:
        row = dataset.rows[p]
        try:
            prompt, guide = build_item_prompt(dataset, row, style, conv_mode, dataset.n_images(row))
            ready.append((p, {"image": dataset.images(row), "prompt": prompt,
                              "text_guide": guide, "image_key": dataset.image_keys[p]}))
        except DatasetError as e:
            bad.append((p, str(e)))
    return ready, bad


def _schedule(dataset, positions):
    """Rows grouped by picture (in order of first appearance), else in file order."""
    first = {}
    for p in positions:
        first.setdefault(dataset.image_keys[p], p)
    return sorted(positions, key=lambda p: (first[dataset.image_keys[p]], p))


def _item_stream(dataset, todo, batch_size, style, conv_mode):
    """_build_items of each batch of the rows to run, the next batch's images decoded on a helper thread."""
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(_build_items, dataset, batches[0], style, conv_mode)
        for k in range(len(batches)):
            built = nxt.result()
            if k + 1 < len(batches):
                nxt = pool.submit(_build_items, dataset, batches[k + 1], style, conv_mode)
            yield built


def _answer_text(a):
    if not isinstance(a, str) and isinstance(getattr(a, "text", None), str):
        a = a.text  # an answer object such as tgllava.chat.Answer
    if not isinstance(a, str):
        raise EvalError(f"the model returned a {type(a).__name__} as an answer, expected str")
    return a.strip()


def _infer(model, dataset, todo, ckpt, batch_size, style, conv_mode, gen, bar):
    """Answer the rows `todo` through the model's answer_stream if it has one, else batch by batch
    through chat_batch (step 3 of the module text); bad rows are checkpointed as failed."""
    index_of = lambda p: dataset.rows[p]["index"]  # noqa: E731
    stream = getattr(model, "answer_stream", None)
    if stream is not None:
        bad = collections.deque()  # (index, reason) not yet checkpointed; deque: the stream may read from a thread

        def ready_items():
            for ready, failed in _item_stream(dataset, todo, batch_size, style, conv_mode):
                bad.extend((index_of(p), reason) for p, reason in failed)
                bar.update(len(failed))
                yield from ready

        def take_bad():
            return [bad.popleft() for _ in range(len(bad))]

        pending = []
        for p, a in stream(ready_items(), batch_size, **gen):
            pending.append((index_of(p), _answer_text(a)))
            bar.update(1)
            if len(pending) >= batch_size:
                ckpt.append(pending, take_bad())
                pending = []
        ckpt.append(pending, take_bad())
        return
    for ready, failed in _item_stream(dataset, todo, batch_size, style, conv_mode):
        items = [item for _, item in ready]
        answers = model.chat_batch(items, **gen) if items else []
        if not isinstance(answers, (list, tuple)) or len(answers) != len(items):
            raise EvalError(
                f"model.chat_batch returned {type(answers).__name__} of "
                f"{len(answers) if hasattr(answers, '__len__') else '?'} answers for {len(items)} items")
        ckpt.append([(index_of(p), _answer_text(a)) for (p, _), a in zip(ready, answers)],
                    [(index_of(p), reason) for p, reason in failed])
        bar.update(len(ready) + len(failed))


def write_predictions(dataset, positions, preds, path):
    """The predictions file: dataset columns but `image`, dataset order, + prediction (None: empty)."""
    columns = [c for c in dataset.columns if c != "image"]
    if "prediction" not in columns:
        columns.append("prediction")
    write_table(path, columns, [{**{c: dataset.rows[p].get(c) for c in columns},
                                 "prediction": preds[dataset.rows[p]["index"]]} for p in positions])


def _unanswered(dataset, positions, preds, failed):
    """The indexes of the rows among `positions` that have neither a prediction nor failed."""
    return [dataset.rows[p]["index"] for p in positions
            if dataset.rows[p]["index"] not in preds and dataset.rows[p]["index"] not in failed]


def _failed_rows(dataset, positions, failed):
    """[{"index", "reason"}] of the failed rows among `positions`, in dataset order."""
    return [{"index": dataset.rows[p]["index"], "reason": failed[dataset.rows[p]["index"]]}
            for p in positions if dataset.rows[p]["index"] in failed]


def _finalize(dataset, positions, preds, failed, work_dir, model_name, fmt, judge, judge_model):
    """Write the predictions file (failed rows with an empty prediction); score it if no row failed.

    A run with failed rows gets no score: an empty prediction does not reliably score as wrong
    (VLMEvalKit's matching reads it as 'nan', which can match an option whose text is 'a'), and a
    score over the answered rows only would not be the benchmark's.
    """
    path = predictions_path(work_dir, model_name, dataset.name, fmt)
    write_predictions(dataset, positions, {**preds, **dict.fromkeys(failed)}, path)
    failed_rows = _failed_rows(dataset, positions, failed)
    if failed_rows:
        result = unscored_result(
            dataset.name, dataset.kind, dataset.scorer, judge_name(make_judge(judge, judge_model)),
            f"{dataset.name}: {len(failed_rows)} of {len(positions)} rows failed (see each one's reason), so "
            "it is not scored; fix them and rerun to retry them")
    else:
        keys = {r["index"]: k for r, k in zip(dataset.rows, dataset.image_keys)}
        result = score(dataset, path, judge=judge, judge_model=judge_model, image_keys=keys)
    result["predictions"] = path
    result["failed"] = failed_rows
    return result


def run(model, data, work_dir="./work_dir", model_name=None, batch_size=8, limit=None, judge=None,
        prompt_style="llava", conv_mode=None, shard=None, progress=True, use_fom=True, use_dp=True,
        max_new_tokens=None, pred_format=None, judge_model=None, environ=None):
    """Evaluate `model` on dataset `data` (name or TSV path; or a list of them).

    Returns the score dict of scoring.score (plus `predictions`, the file
    written, and `failed`, [{"index", "reason"}] of the bad rows), or - for
    a list - {dataset name: score dict}.  A shard whose siblings have not
    finished returns {"dataset", "shard", "rows", "merged": False, "failed"}.
    See the module docstring for files and resume.
    """
    if isinstance(data, (list, tuple)):
        return {os.path.splitext(os.path.basename(str(d)))[0]: run(
            model, d, work_dir, model_name, batch_size, limit, judge, prompt_style, conv_mode, shard,
            progress, use_fom, use_dp, max_new_tokens, pred_format, judge_model, environ) for d in data}
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style {prompt_style!r}: expected one of {', '.join(PROMPT_STYLES)}")
    fmt = resolve_pred_format(pred_format)
    work_dir = os.path.abspath(work_dir)
    dataset = load_dataset(data)
    if not dataset.has_images:
        raise DatasetError(f"{dataset.name}: no image or image_path column; nothing to run")
    model_name = safe_name(model_name) if model_name else model_name_of(model)
    os.makedirs(os.path.join(work_dir, model_name), exist_ok=True)
    info = detect_shard(shard, environ)

    if prompt_style == "llava" and conv_mode is None:
        conv_mode = default_conv_mode(model)
    settings = run_settings(model, prompt_style, conv_mode, max_new_tokens or dataset.benchmark.max_new_tokens,
                            use_fom, use_dp)
    positions = list(range(len(dataset)))[:limit]
    owner = partition([dataset.image_keys[p] for p in positions], info.world)
    mine = [p for p, o in zip(positions, owner) if o == info.rank]
    header = {"tgllava_eval_checkpoint": CHECKPOINT_VERSION, "dataset": dataset.name,
              "model": model_name, "settings": settings, "limit": limit,
              "shard": [info.rank, info.world]}
    ckpt = Checkpoint(checkpoint_path(work_dir, model_name, dataset.name, info.rank, info.world), header)
    ckpt.open()  # held until the run ends: no other run can write this checkpoint meanwhile
    try:
        return _run_locked(model, dataset, positions, mine, ckpt, settings, info, work_dir, model_name, fmt,
                           batch_size, prompt_style, conv_mode, progress, judge, judge_model)
    finally:
        ckpt.close()


def _run_locked(model, dataset, positions, mine, ckpt, settings, info, work_dir, model_name, fmt, batch_size,
                prompt_style, conv_mode, progress, judge, judge_model):
    """run() once it holds its checkpoint: resume, infer, then write the final files when all rows are in."""
    _, _, done, _ = collect_predictions(find_checkpoints(work_dir, model_name, dataset.name), settings)
    index_of = lambda p: dataset.rows[p]["index"]  # noqa: E731
    left = [p for p in mine if index_of(p) not in done]
    ckpt.append([], [(index_of(p), dataset.row_errors[p]) for p in left if p in dataset.row_errors])
    todo = _schedule(dataset, [p for p in left if p not in dataset.row_errors])
    gen = {"max_new_tokens": settings["max_new_tokens"], "temperature": 0.0,
           "use_fom": settings["use_fom"], "use_dp": settings["use_dp"]}
    desc = f"{model_name}/{dataset.name}" + (f" [{info.rank}/{info.world}]" if info.world > 1 else "")
    if todo:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, unit="sample",
                   disable=not progress, dynamic_ncols=True, smoothing=0.05)
        try:
            _infer(as_eval_model(model), dataset, todo, ckpt, batch_size, prompt_style, conv_mode, gen, bar)
        finally:
            bar.close()

    paths = find_checkpoints(work_dir, model_name, dataset.name)
    _, _, preds, failed = collect_predictions(paths, settings)
    if info.world == 1:
        return _finalize(dataset, positions, preds, failed, work_dir, model_name, fmt, judge, judge_model)
    merged = _merge_if_complete(dataset, positions, preds, failed, paths, work_dir, model_name, fmt, judge,
                                judge_model)
    if merged is not None:
        return merged
    return {"dataset": dataset.name, "shard": [info.rank, info.world], "rows": len(mine), "merged": False,
            "failed": _failed_rows(dataset, mine, failed)}


def _merge_if_complete(dataset, positions, preds, failed, paths, work_dir, model_name, fmt, judge, judge_model):
    """Write the final files if all rows are answered or failed; one process does it (lock file)."""
    if _unanswered(dataset, positions, preds, failed):
        return None
    lock = os.path.join(work_dir, model_name, f"{model_name}_{dataset.name}.merge.lock")
    if not _take_lock(lock):
        return None  # another shard is merging
    try:
        final = predictions_path(work_dir, model_name, dataset.name, fmt)
        if os.path.exists(final) and all(os.path.getmtime(final) >= os.path.getmtime(p) for p in paths):
            return None  # a sibling already merged these very checkpoints
        return _finalize(dataset, positions, preds, failed, work_dir, model_name, fmt, judge, judge_model)
    finally:
        os.unlink(lock)


# A merge lock older than this is taken over even when its owner cannot be checked (another host).
STALE_LOCK_SECONDS = 3600


def _lock_is_stale(lock, content):
    """True when the lock's owner is gone: a dead pid on this host, or an old lock."""
    try:
        age = time.time() - os.path.getmtime(lock)
    except OSError:
        return False
    parts = content.split()
    if len(parts) >= 2 and parts[0].isdigit() and parts[1] == socket.gethostname():
        pid = int(parts[0])
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True  # the shard that took it was killed
        except PermissionError:
            pass  # alive, someone else's
    return age > STALE_LOCK_SECONDS  # alive, or empty (older tgllava), torn, or from another host


def _read_lock(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _take_lock(lock):
    """Create the merge lock (holding "pid host time"); take over a stale one. False if held."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            content = _read_lock(lock)
            if content is None or not _lock_is_stale(lock, content):
                return False
            # move the stale lock aside, then make sure it was the one judged stale (not a new owner's)
            aside = f"{lock}.stale.{os.getpid()}"
            try:
                os.replace(lock, aside)
            except OSError:
                return False
            if _read_lock(aside) != content:
                with contextlib.suppress(OSError):  # fails if yet another lock exists
                    os.link(aside, lock)  # put the new owner's lock back
                os.unlink(aside)
                return False
            os.unlink(aside)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n")
        return True
    return False


def merge(work_dir, model_name, data, judge=None, limit=None, pred_format=None, judge_model=None):
    """Join the shard checkpoints of a run into the single-process files and score them.

    `limit` defaults to the one the shards recorded.  Raises ShardError
    when rows are missing (naming the checkpoints found) or the
    checkpoints were made with different settings.
    """
    if isinstance(data, (list, tuple)):
        return {os.path.splitext(os.path.basename(str(d)))[0]: merge(
            work_dir, model_name, d, judge, limit, pred_format, judge_model) for d in data}
    fmt = resolve_pred_format(pred_format)
    work_dir = os.path.abspath(work_dir)
    model_name = safe_name(model_name)
    dataset = load_dataset(data)
    paths = find_checkpoints(work_dir, model_name, dataset.name)
    if not paths:
        raise ShardError(
            f"no checkpoints for model {model_name} and dataset {dataset.name} under "
            f"{os.path.join(work_dir, model_name)}")
    settings, limits, preds, failed = collect_predictions(paths)
    if limit is None:
        if len(limits) > 1:
            raise ShardError(f"the checkpoints were made with different limits {sorted(limits, key=str)}; "
                             "pass limit explicitly")
        limit = next(iter(limits)) if limits else None
    positions = list(range(len(dataset)))[:limit]
    missing = _unanswered(dataset, positions, preds, failed)
    if missing:
        names = ", ".join(os.path.basename(p) for p in paths)
        raise ShardError(
            f"{len(missing)} of {len(positions)} rows of {dataset.name} have no prediction yet "
            f"(first: {missing[:5]}); checkpoints found: {names}. Finish the missing shards, then merge.")
    return _finalize(dataset, positions, preds, failed, work_dir, model_name, fmt, judge, judge_model)
