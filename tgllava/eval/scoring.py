"""Scoring a predictions file: the dataset family's evaluate() and its files.

`score(data, predictions_file)` reads a predictions table - ours, or
VLMEvalKit's xlsx/tsv/json with a `prediction` column - and hands it, as a
`Scoring`, to the score function of the dataset's family (benchmarks.py),
which extracts answers, scores them with the rules of metrics.py and writes,
next to the predictions (or under `work_dir`), the files VLMEvalKit writes
for that dataset:

* MCQ: ``<base>_<judge>_result.<fmt>`` (hit and log per row or per circular
  group) and ``<base>_acc.csv``;
* Y/N: ``<base>_auxmatch.<fmt>`` (extracted answer, score) and
  ``<base>_score.csv``;
* VQA: ``<base>_results.<fmt>`` and ``<base>_acc.csv``; OCRBench
  ``<base>_score.json`` (plus the same numbers as ``<base>_score.csv``);
  MathVista ``<base>_<judge>.<fmt>`` and ``<base>_<judge>_score.csv``;
  MMVet ``<base>_<judge>.<fmt>``, ``<base>_<judge>_score.csv`` and
  ``<base>_<judge>_score_fine.csv``; LLaVABench ``<base>_<judge>_result.<fmt>``
  and ``<base>_score.csv`` (``<base>_exact_matching_score.csv`` without a judge).

`<base>` is the predictions file's path without its extension and `<fmt>`
its format.  MathVista, MMVet and LLaVABench need a judge in VLMEvalKit;
without one they get exact-match scores, and the result says so
(``exact_matching: True`` and a note).

The result is a dict: dataset, kind, scorer, judge, exact_matching, note,
headline (the numbers people quote, each as its score csv holds it:
multiple-choice accuracy from 0 to 1, the other accuracies in percent, MME
and OCRBench in points), scores (every cell of the score tables,
flattened), files (paths written).  A dataset without an `answer` column
(LLaVABench: nor `gpt4_ans`) is inference only, as in VLMEvalKit: an empty
headline, no files and a note saying so.
"""

import os

from .benchmarks import find_benchmark
from .data import load_dataset, load_dataset_meta
from .errors import DatasetError
from .judge import JudgeCache, judge_name, make_judge
from .tables import dump_json, read_table, write_score_csv, write_table

_LABEL_COLUMNS = ("split", "Task&Skill", "Category")


class Scoring:
    """One scoring under way: what a family's score function reads, and the files and numbers it makes.

    Reads: `name` (the dataset's), `data` (as given to score), `meta` (the Dataset without images,
    or None when its TSV was not found), `columns` and `rows` of the predictions file, `judge`
    (None: exact matching), `image_of()`.  Writes: `record` (a per-row table in the predictions'
    format), `table` (a score csv; its cells go into `scores`), `json`, and the `headline`, `note`.
    """

    def __init__(self, name, data, meta, columns, rows, judge, image_keys, base, fmt):
        self.name, self.data, self.meta, self.columns, self.rows = name, data, meta, columns, rows
        self.judge, self.image_keys = judge, image_keys
        self.base, self.fmt = base, fmt
        self.files, self.scores, self.headline = [], {}, {}
        self.note = None

    def record(self, suffix, columns, rows):
        path = f"{self.base}{suffix}.{self.fmt}"
        write_table(path, columns, rows)
        self.files.append(path)

    def table(self, suffix, columns, rows):
        path = f"{self.base}{suffix}.csv"
        write_score_csv(path, columns, rows)
        self.files.append(path)
        label = columns[0] if columns and columns[0] in _LABEL_COLUMNS else None
        self.scores.update({(f"{r[label]}/{c}" if label else c): r[c]
                            for r in rows for c in columns if c != label})

    def json(self, suffix, obj):
        path = f"{self.base}{suffix}.json"
        dump_json(path, obj)
        self.files.append(path)

    def image_of(self):
        """How MME and AMBER group questions by picture: image_path, else the image keys."""
        if "image_path" in self.columns:
            return lambda r: r.get("image_path")
        keys = self.image_keys
        if keys is None:
            if self.meta is None:
                raise DatasetError(
                    "MME scoring groups questions by image_path, which the predictions file lacks, "
                    "and the dataset TSV (to group by image) was not found")
            full = load_dataset(self.data)
            keys = {r["index"]: k for r, k in zip(full.rows, full.image_keys)}
        return lambda r: keys.get(r["index"], r["index"])


def _try_meta(data):
    """The dataset (without images) if its TSV can be found, else None."""
    try:
        return load_dataset_meta(data)
    except DatasetError:
        if isinstance(data, str) and os.path.isfile(data):
            raise
        return None


def _dataset_name(data, meta):
    if meta is not None:
        return meta.name
    name = os.path.basename(os.fspath(data))
    return os.path.splitext(name)[0] if name.lower().endswith(".tsv") else name


def score(data, predictions_file, judge=None, work_dir=None, judge_model=None, image_keys=None):
    """Score a predictions file for dataset `data` (a name, a TSV path or a Dataset); the result dict above.

    The dataset TSV is used when it can be found (MCQ answers come from it, as in VLMEvalKit), else the
    file's own columns.  `judge` is None/'exact_matching', a callable or a URL (judge.py).  Files go next
    to the predictions, or into `work_dir`.  `image_keys` ({index: key}) groups MME questions by picture
    when the file lacks `image_path`.
    """
    judge = make_judge(judge, judge_model)
    columns, rows = read_table(predictions_file)
    for need in ("index", "prediction"):
        if need not in columns:
            raise DatasetError(f"{predictions_file}: no '{need}' column")
    meta = _try_meta(data)
    name = _dataset_name(data, meta)
    bench = meta.benchmark if meta is not None else find_benchmark(name, columns, rows)
    if not any(c in (meta.columns if meta is not None else columns) for c in bench.references):
        return unscored_result(name, bench.kind, bench.scorer, judge_name(judge),
                               f"{name} has no {' or '.join(bench.references)} column: inference only (as in "
                               "VLMEvalKit), predictions written but not scored")
    for r in rows:
        r["prediction"] = "nan" if r.get("prediction") is None else str(r["prediction"])

    stem, ext = os.path.splitext(os.path.basename(predictions_file))
    folder = work_dir if work_dir is not None else os.path.dirname(os.path.abspath(predictions_file))
    os.makedirs(folder, exist_ok=True)
    fmt = ext.lower().lstrip(".")
    job = Scoring(name, data, meta, columns, rows, judge, image_keys, os.path.join(folder, stem),
                  "tsv" if fmt == "csv" else fmt)
    if judge is not None:
        judge.cache = JudgeCache(f"{job.base}_{judge.name}_judge_cache.jsonl")
    bench.score(job)

    exact = judge is None and bench.judged
    if exact and job.note is None:
        job.note = (f"{name} is judged by an LLM in VLMEvalKit; without a judge these are "
                    "exact-match scores, not comparable with judged results")
    return {
        "dataset": name, "kind": bench.kind, "scorer": bench.scorer, "judge": judge_name(judge),
        "exact_matching": exact, "note": job.note, "headline": job.headline,
        "scores": job.scores, "files": job.files,
    }


def unscored_result(name, kind, scorer, judge_label, note):
    """A result without numbers (no headline, scores or files), `note` saying why."""
    return {"dataset": name, "kind": kind, "scorer": scorer, "judge": judge_label, "exact_matching": False,
            "note": note, "headline": {}, "scores": {}, "files": []}


# ------------------------------------------------------------------ summary

def format_summary(results):
    """A plain-text table of the headline numbers of several results, as their score csv files hold them."""
    lines = []
    for res in results:
        judge = res.get("judge", "")
        tag = " (exact match, no judge)" if res.get("exact_matching") else ""
        if not res.get("headline"):
            lines.append((res.get("dataset", "?"), "-", "-", judge + tag))
        if res.get("failed"):
            lines.append((res["dataset"], "failed rows", str(len(res["failed"])), judge))
        for metric, value in (res.get("headline") or {}).items():
            lines.append((res["dataset"], metric, _fmt(value), judge + tag))
    header = ("dataset", "metric", "value (as in the score csv)", "judge")
    widths = [max(len(str(x[i])) for x in lines + [header]) for i in range(4)]

    def row(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    text = [row(header), row(["-" * w for w in widths])] + [row(line) for line in lines]
    notes = [f"note: {r['note']}" for r in results if r.get("note")]
    return "\n".join(text + notes)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"  # the csv's number to 6 significant digits
    return str(v)
