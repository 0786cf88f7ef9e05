"""Scoring a predictions file: the per-dataset evaluate() steps and their files.

`score(data, predictions_file)` reads a predictions table - ours, or
VLMEvalKit's xlsx/tsv/json with a `prediction` column - extracts answers,
scores them with the rules of metrics.py and writes, next to the
predictions (or under `work_dir`), the files VLMEvalKit writes for that
dataset:

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
headline (the numbers people quote, in percent or OCRBench points), scores
(every cell of the score tables, flattened), files (paths written).

A dataset without an `answer` column (LLaVABench: nor `gpt4_ans`; a test
split whose answers are withheld) is not scored, as VLMEvalKit does inference only for such sets:
the result has an empty headline, no files and a note saying so.
`format_summary` shows the headline numbers of several results, their
failed rows (runner.py) and their notes.
"""

import json
import os

from .data import MCQ, YORN, dataset_rules, is_circular, load_dataset, load_dataset_meta
from .errors import DatasetError
from .extract import normalize_vqa_answer, yes_no
from .judge import (JudgeCache, judge_name, llavabench_prompt, make_judge, mathvista_prompt,
                    mcq_prompt, mmvet_prompt, yes_no_prompt)
from . import metrics as M
from .tables import coerce_column, read_table, render_value, write_score_csv, write_table

JUDGE_SETS = frozenset(["mathvista", "mmvet", "llavabench"])
_LABEL_COLUMNS = ("split", "Task&Skill", "Category")
_LETTERS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class _Out:
    """Collects the files and numbers of one scoring."""

    def __init__(self, base, fmt):
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
        for r in rows:
            for c in columns:
                if c == label:
                    continue
                key = f"{r[label]}/{c}" if label else c
                self.scores[key] = r[c]

    def json(self, suffix, obj):
        path = f"{self.base}{suffix}.json"
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=4, ensure_ascii=False)
        os.replace(tmp, path)
        self.files.append(path)


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
    """Score a predictions file for dataset `data` (a name, a TSV path or a Dataset).

    The dataset TSV is used when it can be found (MCQ answers come from it,
    as in VLMEvalKit); otherwise the predictions file's own columns are
    used.  `judge` is None/'exact_matching', a callable or a URL (see
    judge.py).  Files go next to the predictions, or into `work_dir`.
    `image_keys` ({index: key}) groups MME questions by picture when the
    file lacks `image_path`.  Returns the result dict described above.
    """
    judge = make_judge(judge, judge_model)
    columns, rows = read_table(predictions_file)
    for need in ("index", "prediction"):
        if need not in columns:
            raise DatasetError(f"{predictions_file}: no '{need}' column")
    meta = _try_meta(data)
    name = _dataset_name(data, meta)
    if meta is not None:
        kind, scorer = meta.kind, meta.scorer
    else:
        kind, scorer = dataset_rules(name, columns, rows)
    references = ("gpt4_ans", "answer") if scorer == "llavabench" else ("answer",)
    if not any(c in (meta.columns if meta is not None else columns) for c in references):
        return unscored_result(name, kind, scorer, judge_name(judge),
                               f"{name} has no {' or '.join(references)} column: inference only (as in "
                               "VLMEvalKit), predictions written but not scored")
    for r in rows:
        r["prediction"] = "nan" if r.get("prediction") is None else str(r["prediction"])

    stem, ext = os.path.splitext(os.path.basename(predictions_file))
    folder = work_dir if work_dir is not None else os.path.dirname(os.path.abspath(predictions_file))
    os.makedirs(folder, exist_ok=True)
    fmt = ext.lower().lstrip(".")
    out = _Out(os.path.join(folder, stem), "tsv" if fmt == "csv" else fmt)
    if judge is not None:
        judge.cache = JudgeCache(f"{out.base}_{judge.name}_judge_cache.jsonl")

    if kind == MCQ:
        _score_mcq(name, meta, columns, rows, judge, out)
    elif kind == YORN:
        _score_yorn(name, scorer, meta, data, columns, rows, judge, out, image_keys)
    else:
        _score_vqa(scorer, columns, rows, judge, out)

    exact = judge is None and scorer in JUDGE_SETS
    if exact and out.note is None:
        out.note = (f"{name} is judged by an LLM in VLMEvalKit; without a judge these are "
                    "exact-match scores, not comparable with judged results")
    return {
        "dataset": name, "kind": kind, "scorer": scorer, "judge": judge_name(judge),
        "exact_matching": exact, "note": out.note, "headline": out.headline,
        "scores": out.scores, "files": out.files,
    }


def unscored_result(name, kind, scorer, judge_label, note):
    """A result without numbers (no headline, scores or files), `note` saying why."""
    return {"dataset": name, "kind": kind, "scorer": scorer, "judge": judge_label, "exact_matching": False,
            "note": note, "headline": {}, "scores": {}, "files": []}


# ------------------------------------------------------------------ MCQ

def _index_key(row):
    try:
        return (0, int(row["index"]), "")
    except (TypeError, ValueError):
        return (1, 0, str(row["index"]))


def _score_mcq(name, meta, columns, rows, judge, out):
    # ImageMCQDataset lower-cases every column name but the option letters.
    rename = {c: (c if c in _LETTERS else c.lower()) for c in columns}
    columns = [rename[c] for c in columns]
    rows = [{rename[k]: v for k, v in r.items()} for r in rows]
    if meta is not None:
        for r in rows:
            pos = meta.position(r["index"])
            if pos is None:
                raise DatasetError(
                    f"predictions row {r['index']} is not in dataset {meta.name}: the predictions "
                    "file must cover the same rows as the dataset or a subset of them")
            r["answer"] = meta.rows[pos].get("answer")
    rows.sort(key=_index_key)
    is_mmmu = "MMMU" in name
    if is_mmmu:
        rows = [M.mmmu_preproc(r) for r in rows]
        for r in rows:
            r["answer"] = M.mcq_answer(r, True)

    judge_fn = None
    if judge is not None:
        def judge_fn(row, choices):
            return judge.ask(mcq_prompt(row.get("question"), choices, row["prediction"]))

    if is_circular(name):
        scored = M.circular_hits(rows, judge_fn)
        graded = []
        for r, hit, log in scored:
            g = dict(r)
            g["hit"], g["log"] = hit, log
            graded.append(g)
    else:
        graded = []
        for r, (hit, log) in zip(rows, M.mcq_hits(rows, judge_fn, is_mmmu=False)):
            g = dict(r)
            g["hit"], g["log"] = hit, log
            graded.append(g)
    rec_cols = [c for c in columns if c not in ("hit", "log")] + ["hit", "log"]
    out.record(f"_{judge_name(judge)}_result", rec_cols,
               [{**g, "hit": str(g["hit"])} for g in graded])
    cols, table = M.report_acc(graded, columns)
    out.table("_acc", cols, table)
    for r in table:
        key = "Overall" if len(table) == 1 else f"Overall[{r['split']}]"
        out.headline[key] = r["Overall"] * 100


# ------------------------------------------------------------------ yes / no

def _score_yorn(name, scorer, meta, data, columns, rows, judge, out, image_keys):
    for r in rows:
        r["extracted"] = yes_no(r["prediction"])
        if r["extracted"] == "Unknown" and judge is not None:
            for i in range(5):
                reply = judge.ask(yes_no_prompt(r.get("question"), r["prediction"]), temperature=0.5 * i)
                ans = yes_no(reply)
                if ans != "Unknown":
                    r["extracted"] = ans
                    break
        if scorer == "amber":
            r["score"] = str(r.get("answer")).lower() == r["extracted"].lower()
        else:
            r["score"] = r.get("answer") == r["extracted"]
    rec_cols = [c for c in columns if c not in ("extracted", "score")] + ["extracted", "score"]
    out.record("_auxmatch", rec_cols, [{**r, "score": str(r["score"])} for r in rows])

    if scorer in ("mme", "amber"):
        image_of = _image_grouping(data, meta, columns, image_keys)
        if scorer == "mme":
            cols, table = M.mme_rating(rows, image_of)
            for k in ("perception", "reasoning"):
                if k in table[0]:
                    out.headline[k] = table[0][k]
        else:
            cols, table = M.amber_rating(rows, image_of)
            out.headline["Avg ACC"] = table[0]["Avg ACC"]
    elif scorer == "hallusion":
        cols, table = M.hallusion_rating(rows, columns)
        for k in ("aAcc", "fAcc", "qAcc"):
            out.headline[k] = table[0][k]
    elif scorer == "pope":
        cols, table = M.pope_rating(rows, columns)
        out.headline["F1"] = table[0]["Overall"]
        out.headline["acc"] = table[0]["acc"]
    else:
        cols, table = M.yorn_default_rating(rows, columns)
        out.headline["Overall"] = table[0]["Overall"]
    out.table("_score", cols, table)


def _image_grouping(data, meta, columns, image_keys):
    """How MME/AMBER group questions by picture: image_path, else image keys."""
    if "image_path" in columns:
        return lambda r: r.get("image_path")
    if image_keys is None:
        if meta is None:
            raise DatasetError(
                "MME scoring groups questions by image_path, which the predictions file lacks, "
                "and the dataset TSV (to group by image) was not found")
        full = load_dataset(data)
        image_keys = {r["index"]: k for r, k in zip(full.rows, full.image_keys)}
    return lambda r: image_keys.get(r["index"], r["index"])


# ------------------------------------------------------------------ VQA

def _score_vqa(scorer, columns, rows, judge, out):
    if scorer == "ocrbench":
        final = M.ocrbench_score(rows)
        out.json("_score", final)
        out.table("_score", list(final), [final])
        out.headline["Final Score"] = final["Final Score"]
        return
    if scorer == "mathvista":
        return _score_mathvista(columns, rows, judge, out)
    if scorer == "mmvet":
        return _score_mmvet(columns, rows, judge, out)
    if scorer == "llavabench":
        return _score_llavabench(columns, rows, judge, out)
    method, rule = M.VQA_METHODS.get(scorer, M.VQA_METHODS["vqa"])
    hits = []
    for r in rows:
        match, pred = M.vqa_match(r, method)
        hit = M.vqa_hit(match, rule)
        hits.append(hit)
        r["eval_gt"] = str(M.answer_list(r.get("answer")))
        r["eval_pred"] = pred
        r["eval_match"] = str([float(m) for m in match])
        r["eval_score"] = repr(M.mean(match))
    extra = ["eval_gt", "eval_pred", "eval_match", "eval_score"]
    out.record("_results", [c for c in columns if c not in extra] + extra, rows)
    cols, table = M.vqa_report(rows, columns, hits)
    out.table("_acc", cols, table)
    out.headline["Overall"] = table[0]["Overall"]


def _score_mathvista(columns, rows, judge, out):
    """MathVista.evaluate_heuristic: prefetch by rules, else the judge's extraction.

    VLMEvalKit reads `answer` and `prediction` with pandas types and checks
    `res` after a trip through its storage file, so a column of numbers is
    compared as numbers; coerce_column gives the same types here.
    """
    answers = coerce_column([r.get("answer") for r in rows])
    preds = coerce_column([r["prediction"] for r in rows])
    typed = [dict(r, answer=a, prediction=p) for r, a, p in zip(rows, answers, preds)]
    res, logs = [], []
    for r, raw in zip(typed, rows):
        pre = M.mathvista_check(r, r["prediction"], prefetch=True)
        if pre:
            res.append(pre)
            logs.append("Prefetch succeed")
        elif judge is None:
            res.append(r["prediction"])
            logs.append("exact matching (no judge)")
        else:
            res.append(judge.ask(mathvista_prompt(r.get("question"), raw["prediction"])))
            logs.append("Succeed")
    for r, v, log in zip(typed, coerce_column(res), logs):
        r["res"], r["log"] = v, log
    out.record(f"_{judge_name(judge)}", [c for c in columns if c not in ("res", "log")] + ["res", "log"],
               [dict(raw, res=render_value(t["res"]), log=t["log"]) for raw, t in zip(rows, typed)])
    cols, table = M.mathvista_report(typed)
    out.table(f"_{judge_name(judge)}_score", cols, table)
    out.headline["acc"] = table[0]["acc"] if table else M.NAN


def _score_mmvet(columns, rows, judge, out):
    for r in rows:
        if judge is None:
            r["score"], r["log"] = M.mmvet_exact(r.get("answer"), r["prediction"]), "exact matching (no judge)"
            continue
        r["score"], r["log"] = 0.0, ""
        prompt = mmvet_prompt(r.get("question"), str(r.get("answer")), r["prediction"])
        for i in range(5):
            reply = judge.ask(prompt, temperature=0.5 * i)
            try:
                value = float(reply)
            except ValueError:
                r["log"] += f"Try {i}: output is {reply}, failed to parse.\n"
                continue
            if 0 <= value <= 1:
                r["score"] = value
                r["log"] += "Succeed"
                break
            r["log"] += f"Try {i}: output is {reply}, invalid score: {value}.\n"
    name = judge_name(judge)
    out.record(f"_{name}", [c for c in columns if c not in ("score", "log")] + ["score", "log"],
               [{**r, "score": repr(float(r["score"]))} for r in rows])
    (c1, t1), (c2, t2) = M.mmvet_report(rows)
    out.table(f"_{name}_score", c1, t1)
    out.table(f"_{name}_score_fine", c2, t2)
    out.scores = {f"{r['Category']}/{k}": r[k] for r in t1 for k in ("tot", "acc")}
    out.scores.update({f"fine:{r['Category']}/{k}": r[k] for r in t2 for k in ("tot", "acc")})
    out.headline["acc"] = t1[-1]["acc"]


def _score_llavabench(columns, rows, judge, out):
    ref_col = "gpt4_ans" if "gpt4_ans" in columns else "answer"
    if judge is None:
        hits = [float(normalize_vqa_answer(r["prediction"]) == normalize_vqa_answer(str(r.get(ref_col))))
                for r in rows]
        for r, h in zip(rows, hits):
            r["score"] = repr(h)
        out.record("_exact_matching_result", columns + ["score"], rows)
        cols, table = M.vqa_report(rows, columns, hits)
        out.table("_exact_matching_score", cols, table)
        out.headline["Overall"] = table[0]["Overall"]
        return
    for r in rows:
        reply = judge.ask(llavabench_prompt(r.get("caption"), r.get("question"), r.get(ref_col), r["prediction"]),
                          temperature=0.2)
        r["gpt4_score"], r["score"] = M.llavabench_parse(reply)
    out.record(f"_{judge.name}_result", [c for c in columns if c not in ("gpt4_score", "score")]
               + ["gpt4_score", "score"],
               [{**r, "gpt4_score": repr(r["gpt4_score"]), "score": repr(r["score"])} for r in rows])
    cols, table = M.llavabench_report(rows)
    out.table("_score", cols, table)
    out.headline["Relative Score"] = table[0]["Relative Score (main)"]


# ------------------------------------------------------------------ summary

def format_summary(results):
    """A plain-text table of the headline numbers of several results."""
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
    header = ("dataset", "metric", "value", "judge")
    widths = [max(len(str(x[i])) for x in lines + [header]) for i in range(4)]

    def row(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    text = [row(header), row(["-" * w for w in widths])] + [row(line) for line in lines]
    notes = [f"note: {r['note']}" for r in results if r.get("note")]
    return "\n".join(text + notes)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)
