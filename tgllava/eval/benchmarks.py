"""The table of benchmarks: one record per dataset family, read by the rest of the package.

VLMEvalKit writes a family of datasets as one class (ImageMCQDataset, ImageYORNDataset with a
rating per set, ImageVQADataset, OCRBench, MathVista, ...); here a family is one `Benchmark`
record in `BENCHMARKS`:

* `scorer` - the family's name (the result's `scorer`): the VLMEvalKit evaluate() it follows;
* `kind` - MCQ, Y/N or VQA (VLMEvalKit's DATASET_TYPE);
* `names` - a regular expression searched, ignoring case, in a dataset's name (None: a family
  only reached through the columns, below);
* `prompt` - the user text of a row (prompts.py wraps it in a prompt style);
* `max_new_tokens` - the answer budget;
* `score` - answer extraction and metric: a function of a scoring.Scoring (`job`) that writes
  the family's files and numbers.  MCQ extraction finds the option letter, Y/N extraction yes
  or no; for VQA families the extraction is the `method` of VLMEvalKit's process_line that
  `_vqa` is built with;
* `judged` - VLMEvalKit scores it with an LLM judge (without one the result says exact match);
* `references` - the columns that hold the reference answer (with none the set is inference only).

data.py finds a dataset's family (`find_benchmark`), prompts.py asks it for the user text, the
runner for the budget and scoring.py for the score, all from BENCHMARKS at call time: a record
put in the table is a new benchmark, no other edit needed.  The first family whose `names`
match wins; a name no family claims falls back on the columns: options A and B -> mcq, every
answer Yes or No -> yorn, otherwise vqa.
"""

import re
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Tuple

from . import metrics as M
from .errors import DatasetError
from .extract import normalize_vqa_answer, yes_no
from .judge import judge_name, llavabench_prompt, mathvista_prompt, mcq_prompt, mmvet_prompt, yes_no_prompt
from .prompts import bare_question, mcq_text, short_answer_text, yes_no_text
from .tables import coerce_column, render_value

MCQ, YORN, VQA = "MCQ", "Y/N", "VQA"
_LETTERS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class Benchmark:
    """One dataset family (see the module text for the fields)."""

    scorer: str
    kind: str
    names: Optional[str]
    prompt: Callable[[dict], str]
    max_new_tokens: int
    score: Callable[..., None]
    judged: bool = False
    references: Tuple[str, ...] = ("answer",)


def _then(columns, *added):
    """A per-row table's columns: `columns`, then the `added` ones last (as a DataFrame's new columns)."""
    return [c for c in columns if c not in added] + list(added)


# ------------------------------------------------------------------ MCQ

def is_circular(name):
    """MMBench-style circular evaluation, as VLMEvalKit decides it by name."""
    low = name.lower()
    return any(s in low for s in ("mmbench", "ccbench", "circular", "mmcr"))


def _index_key(row):
    try:
        return (0, int(row["index"]), "")
    except (TypeError, ValueError):
        return (1, 0, str(row["index"]))


def score_mcq(job):
    """ImageMCQDataset.evaluate: option letters, hit per row (or per circular group), report_acc."""
    # ImageMCQDataset lower-cases every column name but the option letters.
    rename = {c: (c if c in _LETTERS else c.lower()) for c in job.columns}
    columns = [rename[c] for c in job.columns]
    rows = [{rename[k]: v for k, v in r.items()} for r in job.rows]
    if job.meta is not None:
        for r in rows:
            pos = job.meta.position(r["index"])
            if pos is None:
                raise DatasetError(
                    f"predictions row {r['index']} is not in dataset {job.meta.name}: the predictions "
                    "file must cover the same rows as the dataset or a subset of them")
            r["answer"] = job.meta.rows[pos].get("answer")
    rows.sort(key=_index_key)
    if "MMMU" in job.name:
        rows = [M.mmmu_preproc(r) for r in rows]

    judge_fn = None
    if job.judge is not None:
        def judge_fn(row, choices):
            return job.judge.ask(mcq_prompt(row.get("question"), choices, row["prediction"]))

    scored = (M.circular_hits if is_circular(job.name) else M.mcq_hits)(rows, judge_fn)
    graded = [dict(r, hit=hit, log=log) for r, hit, log in scored]
    job.record(f"_{judge_name(job.judge)}_result", _then(columns, "hit", "log"),
               [{**g, "hit": str(g["hit"])} for g in graded])
    cols, table = M.report_acc(graded, columns)
    job.table("_acc", cols, table)
    for r in table:
        key = "Overall" if len(table) == 1 else f"Overall[{r['split']}]"
        job.headline[key] = r["Overall"]


# ------------------------------------------------------------------ yes / no

def score_yorn(job, rating, headline, by_image=False, ignore_case=False, rename=None):
    """ImageYORNDataset.evaluate: yes/no per row (the judge asked when neither), then `rating`.

    `rating` (metrics.py) reads the rows and job.image_of() (`by_image`) or the columns and gives the
    `_score` table; the `headline` columns of its first row (those present) are the headline numbers,
    named as in `rename`.
    """
    for r in job.rows:
        r["extracted"] = yes_no(r["prediction"])
        if r["extracted"] == "Unknown" and job.judge is not None:
            prompt = yes_no_prompt(r.get("question"), r["prediction"])
            for i in range(5):
                ans = yes_no(job.judge.ask(prompt, temperature=0.5 * i))
                if ans != "Unknown":
                    r["extracted"] = ans
                    break
        if ignore_case:
            r["score"] = str(r.get("answer")).lower() == r["extracted"].lower()
        else:
            r["score"] = r.get("answer") == r["extracted"]
    job.record("_auxmatch", _then(job.columns, "extracted", "score"),
               [{**r, "score": str(r["score"])} for r in job.rows])
    cols, table = rating(job.rows, job.image_of() if by_image else job.columns)
    rename = rename or {}
    job.headline.update({rename.get(c, c): table[0][c] for c in headline if c in table[0]})
    job.table("_score", cols, table)


def _yorn(rating, *headline, **options):
    return partial(score_yorn, rating=rating, headline=headline, **options)


# ------------------------------------------------------------------ VQA

def score_vqa(job, method, rule):
    """ImageVQADataset.evaluate: process_line `method` per row, hit_calculate `rule`, the accuracy table."""
    hits = []
    for r in job.rows:
        match, pred = M.vqa_match(r, method)
        hits.append(M.vqa_hit(match, rule))
        r["eval_gt"] = str(M.answer_list(r.get("answer")))
        r["eval_pred"] = pred
        r["eval_match"] = str([float(m) for m in match])
        r["eval_score"] = repr(M.mean(match))
    job.record("_results", _then(job.columns, "eval_gt", "eval_pred", "eval_match", "eval_score"), job.rows)
    cols, table = M.vqa_report(job.rows, job.columns, hits)
    job.table("_acc", cols, table)
    job.headline["Overall"] = table[0]["Overall"]


def _vqa(method, rule):
    return partial(score_vqa, method=method, rule=rule)


def score_ocrbench(job):
    """OCRBench.evaluate: points per category, `_score.json` (and the same numbers as a csv)."""
    final = M.ocrbench_score(job.rows)
    job.json("_score", final)
    job.table("_score", list(final), [final])
    job.headline["Final Score"] = final["Final Score"]


def score_mathvista(job):
    """MathVista.evaluate_heuristic: prefetch by rules, else the judge's extraction.

    VLMEvalKit reads `answer` and `prediction` with pandas types and checks
    `res` after a trip through its storage file, so a column of numbers is
    compared as numbers; coerce_column gives the same types here.
    """
    rows, judge = job.rows, job.judge
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
    job.record(f"_{judge_name(judge)}", _then(job.columns, "res", "log"),
               [dict(raw, res=render_value(t["res"]), log=t["log"]) for raw, t in zip(rows, typed)])
    cols, table = M.mathvista_report(typed)
    job.table(f"_{judge_name(judge)}_score", cols, table)
    job.headline["acc"] = table[0]["acc"] if table else M.NAN


def score_mmvet(job):
    """MMVet.evaluate: a judge's 0-1 grade per answer (exact match without one), MMVet_acc."""
    rows, judge = job.rows, job.judge
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
    job.record(f"_{name}", _then(job.columns, "score", "log"),
               [{**r, "score": repr(float(r["score"]))} for r in rows])
    (c1, t1), (c2, t2) = M.mmvet_report(rows)
    job.table(f"_{name}_score", c1, t1)
    job.table(f"_{name}_score_fine", c2, t2)
    job.scores = {f"{r['Category']}/{k}": r[k] for r in t1 for k in ("tot", "acc")}
    job.scores.update({f"fine:{r['Category']}/{k}": r[k] for r in t2 for k in ("tot", "acc")})
    job.headline["acc"] = t1[-1]["acc"]


def score_llavabench(job):
    """LLaVABench.evaluate: the judge's two grades per answer, relative score (exact match without one)."""
    columns, rows, judge = job.columns, job.rows, job.judge
    ref_col = "gpt4_ans" if "gpt4_ans" in columns else "answer"
    if judge is None:
        hits = [float(normalize_vqa_answer(r["prediction"]) == normalize_vqa_answer(str(r.get(ref_col))))
                for r in rows]
        for r, h in zip(rows, hits):
            r["score"] = repr(h)
        job.record("_exact_matching_result", columns + ["score"], rows)
        cols, table = M.vqa_report(rows, columns, hits)
        job.table("_exact_matching_score", cols, table)
        job.headline["Overall"] = table[0]["Overall"]
        return
    for r in rows:
        reply = judge.ask(llavabench_prompt(r.get("caption"), r.get("question"), r.get(ref_col), r["prediction"]),
                          temperature=0.2)
        r["gpt4_score"], r["score"] = M.llavabench_parse(reply)
    job.record(f"_{judge.name}_result", _then(columns, "gpt4_score", "score"),
               [{**r, "gpt4_score": repr(r["gpt4_score"]), "score": repr(r["score"])} for r in rows])
    cols, table = M.llavabench_report(rows)
    job.table("_score", cols, table)
    job.headline["Relative Score"] = table[0]["Relative Score (main)"]


# ------------------------------------------------------------------ the table

BENCHMARKS = (
    Benchmark("mme", YORN, r"^mme($|[^a-z])", bare_question, 128,  # not MMERealWorld
              _yorn(M.mme_rating, "perception", "reasoning", by_image=True)),
    Benchmark("mcq", MCQ, "mmbench|ccbench|mmstar|mmmu|ai2d|scienceqa|seedbench|realworldqa|a-okvqa|mmt-bench|"
              "blink|circular", mcq_text, 128, score_mcq),
    Benchmark("hallusion", YORN, "hallusionbench", bare_question, 128,
              _yorn(M.hallusion_rating, "aAcc", "fAcc", "qAcc")),
    Benchmark("pope", YORN, "pope", bare_question, 128,
              _yorn(M.pope_rating, "Overall", "acc", rename={"Overall": "F1"})),
    Benchmark("amber", YORN, "amber", yes_no_text, 128,
              _yorn(M.amber_rating, "Avg ACC", by_image=True, ignore_case=True)),
    Benchmark("textvqa", VQA, "textvqa", short_answer_text, 128, _vqa("vqa_score", "mean")),
    Benchmark("anls", VQA, "docvqa|infovqa", short_answer_text, 128, _vqa("anls", "anls")),
    Benchmark("chartqa", VQA, "chartqa", short_answer_text, 128, _vqa("relaxed_accuracy", "max")),
    Benchmark("ocrvqa", VQA, "ocrvqa", short_answer_text, 128, _vqa("accuracy", "max")),
    Benchmark("gqa", VQA, "gqa", short_answer_text, 128, _vqa("accuracy", "mean")),
    Benchmark("ocrbench", VQA, "ocrbench", bare_question, 128, score_ocrbench),
    Benchmark("mathvista", VQA, "mathvista", bare_question, 1024, score_mathvista, judged=True),
    Benchmark("llavabench", VQA, "llavabench", bare_question, 1024, score_llavabench, judged=True,
              references=("gpt4_ans", "answer")),
    Benchmark("mmvet", VQA, "mmvet|mm-vet", bare_question, 1024, score_mmvet, judged=True),
    # reached through the columns only
    Benchmark("yorn", YORN, None, bare_question, 128, _yorn(M.yorn_default_rating, "Overall")),
    Benchmark("vqa", VQA, None, bare_question, 512, _vqa("vqa_score", "mean")),
)


def find_benchmark(name, columns=(), rows=()):
    """The family of a dataset: the first in BENCHMARKS whose `names` match, else by the columns."""
    for bench in BENCHMARKS:
        if bench.names is not None and re.search(bench.names, name, re.IGNORECASE):
            return bench
    if "A" in columns and "B" in columns:
        fallback = "mcq"
    else:
        answers = [r.get("answer") for r in rows]
        fallback = "yorn" if answers and all(a in ("Yes", "No") for a in answers) else "vqa"
    return next(bench for bench in BENCHMARKS if bench.scorer == fallback)
