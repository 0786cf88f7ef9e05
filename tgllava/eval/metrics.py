"""Scores per benchmark, reproducing VLMEvalKit's evaluate() functions.

Every function takes rows (dicts of cells, str or None, with a string
`prediction`) and returns plain tables - (columns, rows) - shaped like the
DataFrame VLMEvalKit writes, so the CSV files line up column for column.
Means go through numpy (np.mean's pairwise summation), as VLMEvalKit's do,
so the last digits agree too.  Where VLMEvalKit iterates a Python `set`
(order changes from run to run) the order here is sorted.

Sources (open-compass/VLMEvalKit):
* mcq_hits, circular_hits, report_acc - vlmeval/dataset/utils/multiple_choice.py
  (mcq_vanilla_eval, mcq_circular_eval, prefetch_circular_group, report_acc,
  MMMU_preproc) and ImageMCQDataset.evaluate_heuristic (image_mcq.py);
* mme_rating, hallusion_rating, pope_rating, amber_rating, yorn_default_rating -
  vlmeval/dataset/utils/yorn.py;
* vqa_match, vqa_report - vlmeval/dataset/utils/vqa_eval.py (process_line,
  hit_calculate, anls_compute, relaxed_correctness) and
  ImageVQADataset.evaluate_heuristic (image_vqa.py);
* ocrbench_score - OCRBench.evaluate (image_vqa.py);
* mathvista_check, mathvista_report - vlmeval/dataset/utils/mathvista.py
  (post_check, MathVista_acc);
* mmvet_report - vlmeval/dataset/utils/mmvet.py (MMVet_acc);
* llavabench_parse, llavabench_report - vlmeval/dataset/utils/llavabench.py.
"""

import ast
import math
import string
from collections import defaultdict

import numpy as np

from .errors import DatasetError
from .extract import infer_choice, normalize_vqa_answer, row_choices

NAN = float("nan")
_LETTERS = frozenset(string.ascii_uppercase)

MMB_ABBRS = {
    "coarse_perception": "CP",
    "finegrained_perception (instance-level)": "FP-S",
    "finegrained_perception (cross-instance)": "FP-C",
    "logic_reasoning": "LR",
    "relation_reasoning": "RR",
    "attribute_reasoning": "AR",
}

MME_PERCEPTION = ["OCR", "artwork", "celebrity", "color", "count", "existence",
                  "landmark", "position", "posters", "scene"]
MME_REASONING = ["code_reasoning", "commonsense_reasoning", "numerical_calculation",
                 "text_translation"]

OCRBENCH_CATEGORIES = [
    "Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
    "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition",
    "Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction",
    "Handwritten Mathematical Expression Recognition",
]
_OCR_HME = "Handwritten Mathematical Expression Recognition"


def mean(values):
    """np.mean as a float; NaN for no values (np.mean([]) without the warning)."""
    if len(values) == 0:
        return NAN
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def _sorted_values(rows, col):
    vals = {r.get(col) for r in rows}
    return sorted((v for v in vals if v is not None), key=str)


def _groups(rows, col):
    """[(value, the rows with it)] for each value of a column, in _sorted_values order."""
    return [(v, [r for r in rows if r.get(col) == v]) for v in _sorted_values(rows, col)]


# ------------------------------------------------------------------ MCQ

def mmmu_preproc(row):
    """MMMU_preproc: an open question becomes a two-option one (A = the answer, B = 'Other Answers'),
    and an answer that is not a letter becomes 'A'."""
    row = dict(row)
    if row.get("A") is None:
        row["A"] = row.get("answer")
        row["B"] = "Other Answers"
    if row.get("answer") not in _LETTERS:
        row["answer"] = "A"
    return row


def extract_mcq(row, judge_fn=None):
    """(letter or 'Z', log) for one MCQ row: rules first, then the judge.

    Reproduces extract_answer_from_item: exact matching gives 'Z' when the
    rules fail; with a judge, up to 3 judge replies are read with the same
    rules.  Where VLMEvalKit then picks a random letter, this gives 'Z'.
    """
    choices = row_choices(row)
    got = infer_choice(row["prediction"], dict(choices))
    if got:
        return got, row["prediction"]
    if judge_fn is None:
        return "Z", "Failed in Prefetch, no GPT-based answer matching under `exact_matching` policy."
    for _ in range(3):
        reply = judge_fn(row, choices)
        got = infer_choice(reply, dict(choices))
        if got:
            return got, reply
    return "Z", "Failed to predict after 3 judge replies."


def mcq_hits(rows, judge_fn=None):
    """[(row, hit 1/0, log)] for a plain MCQ set (mcq_vanilla_eval)."""
    out = []
    for row in rows:
        opt, log = extract_mcq(row, judge_fn)
        out.append((row, int(opt == row.get("answer")), f"Match Log: {log}. "))
    return out


def _to_int(v, what="index"):
    try:
        return int(v)
    except (TypeError, ValueError):
        try:
            f = float(v)
            if f.is_integer():
                return int(f)
        except (TypeError, ValueError):
            pass
    raise DatasetError(f"circular evaluation needs integer {what} values; got {v!r}")


def _int_index(row):
    return _to_int(row.get("index"))


def circular_hits(rows, judge_fn=None):
    """MMBench circular evaluation (mcq_circular_eval, prefetch_circular_group).

    Rows are grouped by `g_index` (or index % 1,000,000); each group whose
    main row (index == g_index) is present scores once: 1 only if every
    rotation in it gives the right letter.  Returns [(main_row, hit, log)]
    in index order.
    """
    rows = sorted(rows, key=_int_index)

    def group_of(r):
        if r.get("g_index") is not None:
            return _to_int(r["g_index"], "g_index")
        return _int_index(r) % 1_000_000

    groups = defaultdict(list)
    for r in rows:
        groups[group_of(r)].append(r)
    return [(r,) + _circular_group(groups[group_of(r)], judge_fn)
            for r in rows if _int_index(r) == group_of(r)]  # the main row of each group


def _circular_group(group, judge_fn):
    preds = []
    for i, r in enumerate(group):
        p = infer_choice(r["prediction"], row_choices(r))
        if p and p != r["answer"]:
            return 0, (f"Failed in Prefetching Rolling {i}: Answer is {r['answer']}, "
                       f"Prediction is {r['prediction']}, Pre-fetched is {p}. ")
        preds.append(p)
    if all(p == r["answer"] for p, r in zip(preds, group)):
        return 1, "Succeed During Pre-fetching"
    if judge_fn is None:
        return 0, "Failed in Prefetch, no GPT-based answer matching under `exact_matching` policy."
    log = ""
    for i, (p, r) in enumerate(zip(preds, group)):
        if p:
            log += f"Rolling {i} Matched.\n"
            continue
        opt, mlog = extract_mcq(r, judge_fn)
        if opt != r["answer"]:
            return 0, log + f"Failed in Rolling {i}: Answer is {r['answer']}; Prediction is {r['prediction']}; " \
                            f"Pre-fetched is {opt}; Match Log is {mlog}.\n"
        log += f"Rolling {i}: Answer is {r['answer']}, Prediction is {r['prediction']}, Pre-fetched is {opt}.\n"
    return 1, log


def report_acc(rows, columns):
    """report_acc: accuracy per split (rows), overall and per l2-category / category.

    Columns: split, Overall, then the l2-categories and the categories
    (sorted; MMBench names abbreviated CP, FP-S, ...).  A split without rows
    of some ability gets NaN (an empty cell), as np.mean([]) does.
    """
    by_split = _groups(rows, "split") if "split" in columns else [("none", rows)]
    res = {"split": [sp for sp, _ in by_split]}
    res["Overall"] = [mean([r["hit"] for r in sub]) for _, sub in by_split]
    for group in ("l2-category", "category"):
        if group not in columns:
            continue
        for ab in _sorted_values(rows, group):
            res[MMB_ABBRS.get(ab, ab)] = [mean([r["hit"] for r in sub if r.get(group) == ab])
                                          for _, sub in by_split]
    cols = list(res)
    return cols, [{c: res[c][i] for c in cols} for i in range(len(by_split))]


# ------------------------------------------------------------------ yes / no

def mme_rating(rows, image_of):
    """MME_rating: per category acc*100 + acc+*100, perception and reasoning sums.

    acc counts questions; acc+ counts images (grouped by `image_of(row)`,
    VLMEvalKit's image_path) whose two questions are both right.  An image
    with a single question (a --limit cut) counts that question alone; a
    super-category sums the categories present (VLMEvalKit needs all).
    """
    stats = {}
    for r in rows:
        stats.setdefault(r.get("category"), {}).setdefault(image_of(r), []).append(int(r["score"]))

    def acc(cat):  # questions right
        return mean([v for val in stats[cat].values() for v in val]) * 100

    def acc_plus(cat):  # pictures with both questions right
        return mean([val[0] * val[1] if len(val) > 1 else val[0] for val in stats[cat].values()]) * 100

    scores = {cat: acc(cat) + acc_plus(cat) for cat in stats}
    ret = {}
    for name, cats in (("perception", MME_PERCEPTION), ("reasoning", MME_REASONING)):
        present = [c for c in cats if c in scores]
        if present:
            base = 0
            for c in present:
                base += scores[c]
            ret[name] = base
    ret.update(scores)
    return list(ret), [ret]


def hallusion_rating(rows, columns):
    """Hallusion_rating: aAcc (questions), fAcc (figures), qAcc (questions over figures).

    set, figure and question ids are fields 3, 4, 5 of the '_'-split index.
    Rows: Overall, each category, each l2-category.
    """
    parsed = []
    for r in rows:
        parts = str(r["index"]).split("_")
        if len(parts) < 6:
            raise DatasetError(
                f"HallusionBench index {r['index']!r} should have 6 '_'-separated fields "
                "(…_set_figure_question)")
        parsed.append((r, parts[3], parts[4], parts[5]))

    def grouped_acc(sub, which):
        groups = {}
        for r, set_id, fig, q in sub:
            key = f"{r.get('l2-category')}_{set_id}_{fig if which == 'f' else q}"
            groups.setdefault(key, []).append(int(r["score"]))
        return mean([all(v) for v in groups.values()]) * 100

    def line(label, sub):
        return {"split": label, "aAcc": mean([int(r["score"]) for r, *_ in sub]) * 100,
                "fAcc": grouped_acc(sub, "f"), "qAcc": grouped_acc(sub, "q")}

    out = [line("Overall", parsed)]
    for col in ("category", "l2-category"):
        if col in columns:
            out += [line(c, [p for p in parsed if p[0].get(col) == c]) for c in _sorted_values(rows, col)]
    return ["split", "aAcc", "fAcc", "qAcc"], out


def _f1(y_true, y_pred):
    tp = sum(1 for t, p in zip(y_true, y_pred) if t and p)
    fp = sum(1 for t, p in zip(y_true, y_pred) if not t and p)
    fn = sum(1 for t, p in zip(y_true, y_pred) if t and not p)
    precision = tp / (tp + fp) if (tp + fp) != 0 else 0
    recall = tp / (tp + fn) if (tp + fn) != 0 else 0
    f1 = 2 * (precision * recall) / (precision + recall) if (precision + recall) != 0 else 0
    return f1, precision, recall


def pope_rating(rows, columns):
    """POPE_rating: F1 ('Overall'), accuracy, precision, recall; ×100.

    Rows whose category lists several (comma-separated) count once per
    category, in the overall line too, as VLMEvalKit's explode() does.
    """
    exploded = [(c, r) for r in rows
                for c in (r["category"].split(",") if r.get("category") is not None else [None])]

    def line(label, sub):
        y_true = [r.get("answer") == "Yes" for _, r in sub]
        y_pred = [r.get("extracted") == "Yes" for _, r in sub]
        f1, p, rc = _f1(y_true, y_pred)
        return {"split": label, "Overall": f1 * 100, "acc": mean([int(r["score"]) for _, r in sub]) * 100,
                "precision": p * 100, "recall": rc * 100}

    out = [line("Overall", exploded)]
    if "category" in columns:
        out += [line(c, [(k, r) for k, r in exploded if k == c])
                for c in sorted({c for c, _ in exploded if c is not None})]
    return ["split", "Overall", "acc", "precision", "recall"], out


_AMBER_MAP = {
    "discriminative-attribute-state": "Attribute",
    "discriminative-attribute-number": "Attribute",
    "discriminative-attribute-action": "Attribute",
    "discriminative-hallucination": "Existence",
    "discriminative-relation": "Relation",
    "relation": "Relation",
}


def amber_rating(rows, image_of):
    """AMBER_rating: accuracy ×100 per merged category and their average."""
    stats = {}
    for r in rows:
        cat = _AMBER_MAP.get(r.get("category"), r.get("category"))
        stats.setdefault(cat, {}).setdefault(image_of(r), []).append(int(r["score"]))
    scores = {k: mean([v for vals in per_image.values() for v in vals]) * 100
              for k, per_image in stats.items()}
    scores["Avg ACC"] = mean(list(scores.values()))
    return list(scores), [scores]


def yorn_default_rating(rows, columns):
    """default_rating: overall and per category / l2-category accuracy ×100."""
    res = {"Overall": mean([int(r["score"]) for r in rows]) * 100}
    for col in ("category", "l2-category"):
        if col in columns:
            for c, sub in _groups(rows, col):
                res[c] = mean([int(r["score"]) for r in sub]) * 100
    return list(res), [res]


# ------------------------------------------------------------------ VQA

def answer_list(cell):
    """The ground truths of a VQA row: a list literal or a single answer."""
    if cell is None:
        return ["nan"]
    if isinstance(cell, str) and cell.startswith("[") and cell.endswith("]"):
        try:
            value = ast.literal_eval(cell)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, list):
            return [str(v) for v in value]
    return [str(cell)]


def _levenshtein(s1, s2):
    if len(s1) > len(s2):
        s1, s2 = s2, s1
    prev = list(range(len(s1) + 1))
    for i2, c2 in enumerate(s2):
        cur = [i2 + 1]
        for i1, c1 in enumerate(s1):
            cur.append(prev[i1] if c1 == c2 else 1 + min(prev[i1], prev[i1 + 1], cur[-1]))
        prev = cur
    return prev[-1]


def anls_distance(gt, pred):
    """anls_compute: normalised edit distance (0 = same) of lower-cased, space-collapsed text."""
    a = " ".join(gt.strip().lower().split())
    b = " ".join(pred.strip().lower().split())
    length = max(len(gt.upper()), len(pred.upper()))
    return 0.0 if length == 0 else float(_levenshtein(a, b)) / float(length)


def relaxed_correct(target, prediction, max_relative_change=0.05):
    """relaxed_correctness (ChartQA): numbers within 5 %, text exactly (case-insensitive)."""
    def to_float(text):
        try:
            if text.endswith("%"):
                return float(text.rstrip("%")) / 100.0
            return float(text)
        except ValueError:
            return None
    prediction, target = str(prediction), str(target)
    p, t = to_float(prediction), to_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= max_relative_change
    return prediction.lower() == target.lower()


def vqa_match(row, method):
    """process_line: per-ground-truth match values for one row."""
    answers = answer_list(row.get("answer"))
    pred = row["prediction"]
    if method == "vqa_score":
        gts = [normalize_vqa_answer(a) for a in answers]
        p = normalize_vqa_answer(pred)
        # per ground truth: how many of the others the prediction equals, over 3, at most 1
        return [min(1, float(sum(g == p for j, g in enumerate(gts) if j != i)) / 3)
                for i in range(len(gts))], p
    if method == "anls":
        return [anls_distance(a, pred) for a in answers], pred
    if method == "relaxed_accuracy":
        p = pred.strip()
        return [relaxed_correct(a, p) for a in answers], p
    if method == "accuracy":
        p = pred.strip()
        return [1.0 if a.strip().lower() == p.lower() else 0.0 for a in answers], p
    raise ValueError(f"unknown VQA method {method}")


def vqa_hit(match, rule, anls_threshold=0.5):
    """hit_calculate for one row."""
    if rule == "anls":
        best = 1 - float(np.min(match))
        return 0.0 if best < anls_threshold else best
    if rule == "max":
        return float(np.max(match))
    return float(np.mean(match))


def vqa_report(rows, columns, hits):
    """ImageVQADataset.evaluate_heuristic's table: ×100 per split then Overall,
    or Overall then per category."""
    def acc_by(col):
        return {v: mean([h for r, h in zip(rows, hits) if r.get(col) == v]) * 100
                for v in _sorted_values(rows, col)}

    overall = {"Overall": mean(hits) * 100}
    if "split" in columns:
        res = {**acc_by("split"), **overall}
    else:
        res = {**overall, **(acc_by("category") if "category" in columns else {})}
    return list(res), [res]


def ocrbench_hit(row):
    """OCRBench: does any ground truth occur in the prediction (its substring rules)?"""
    def norm(text):  # formulas compare without spaces, other text in lower case
        if row.get("category") == _OCR_HME:
            return text.strip().replace("\n", " ").replace(" ", "")
        return text.lower().strip().replace("\n", " ")

    predict = norm(str(row["prediction"]))
    return int(any(norm(answer) in predict for answer in answer_list(row.get("answer"))))


def ocrbench_score(rows):
    """OCRBench.evaluate: counts per group and the final score out of 1000."""
    counts = {c: 0 for c in OCRBENCH_CATEGORIES}
    for r in rows:
        cat = r.get("category")
        if cat not in counts:
            raise DatasetError(f"OCRBench row {r.get('index')}: unknown category {cat!r}")
        counts[cat] += ocrbench_hit(r)
    final = {"Text Recognition": sum(counts[c] for c in OCRBENCH_CATEGORIES[:6])}
    final.update({c: counts[c] for c in OCRBENCH_CATEGORIES[6:]})  # scene, doc, key information, formulas
    final["Final Score"] = sum(final.values())
    final["Final Score Norm"] = float(final["Final Score"]) / 10
    return final


# ------------------------------------------------------------------ MathVista

def mathvista_check(row, response, prefetch):
    """post_check: is `response` (the prediction, or the judge's extraction) right?

    Multiple choice: can_infer over the `choices` list against
    `answer_option` (with prefetch=True the inferred letter is returned
    whatever it is).  integer/float answers compare as numbers.  Other
    answer types never match - VLMEvalKit compares str(None) with the
    answer there, a quirk kept so scores agree.
    """
    ans = row.get("answer")
    res = None
    try:
        if row.get("question_type") == "multi_choice":
            ans = row.get("answer_option")
            opts = ast.literal_eval(row.get("choices"))
            choices = {chr(65 + i): v for i, v in enumerate(opts)}
            res = infer_choice(response, choices)
            if prefetch:
                return res
        elif row.get("answer_type") == "integer":
            res = int(response)
            ans = int(row.get("answer"))
        elif row.get("answer_type") == "float":
            res = float(response)
            ans = float(row.get("answer"))
        else:
            res = str(res)
            ans = str(ans)
    except (ValueError, TypeError, SyntaxError):
        pass
    if res == ans:
        return res if prefetch else True
    return False


def mathvista_report(rows):
    """MathVista_acc: tot, prefetch, hit and rates per Overall, skill and task."""
    tot, fetch, hit = defaultdict(int), defaultdict(int), defaultdict(int)
    for r in rows:
        cate = r.get("task")
        tot["Overall"] += 1
        try:
            skills = ast.literal_eval(r.get("skills"))
            if not isinstance(skills, (list, tuple)):
                skills = [r.get("skills")]
        except (ValueError, SyntaxError, TypeError):
            skills = [r.get("skills")]
        for s in skills:
            tot[s] += 1
        tot[cate] += 1
        keys = ["Overall", cate] + list(skills)
        if r["log"] == "Prefetch succeed":
            for k in keys:
                fetch[k] += 1
        if mathvista_check(r, r["res"], prefetch=False):
            for k in keys:
                hit[k] += 1
    out = [{"Task&Skill": k, "tot": tot[k], "prefetch": fetch[k], "hit": hit[k],
            "prefetch_rate": fetch[k] / tot[k] * 100, "acc": hit[k] / tot[k] * 100} for k in tot]
    return ["Task&Skill", "tot", "prefetch", "hit", "prefetch_rate", "acc"], out


# ------------------------------------------------------------------ MMVet

MMVET_CAPABILITIES = ["rec", "ocr", "know", "gen", "spat", "math"]


def mmvet_exact(answer, prediction):
    """Exact-match stand-in for MMVet's judge: 1.0 when the ground truth is found.

    <OR> separates alternatives, <AND> parts that must all occur; each part
    is compared after VQA normalisation, as a substring of the prediction.
    """
    pred = normalize_vqa_answer(str(prediction))
    for alt in str(answer).split("<OR>"):
        parts = [normalize_vqa_answer(p) for p in alt.split("<AND>")]
        if parts and all(p and p in pred for p in parts):
            return 1.0
    return 0.0


def mmvet_report(rows):
    """MMVet_acc: (per capability table, per category-combination table), acc ×100."""
    tot, score = defaultdict(int), defaultdict(float)
    combos = []
    for r in rows:
        cate = r.get("category") or ""
        combo = cate.replace(",", "_")
        if combo not in combos:
            combos.append(combo)
        grade = float(r["score"])
        for capa in MMVET_CAPABILITIES:
            if capa in cate:
                tot[capa] += 1
                score[capa] += grade
        tot["Overall"] += 1
        tot[combo] += 1
        score["Overall"] += grade
        score[combo] += grade

    def table(keys):
        return [{"Category": k, "tot": tot[k],
                 "acc": score[k] / tot[k] * 100 if tot[k] else NAN} for k in keys]

    cols = ["Category", "tot", "acc"]
    return (cols, table(MMVET_CAPABILITIES + ["Overall"])), (cols, table(combos + ["Overall"]))


# ------------------------------------------------------------------ LLaVABench

def llavabench_parse(review):
    """parse_score: the two numbers on the first line, or [-1, -1]."""
    try:
        first = review.split("\n")[0].replace(",", " ")
        parts = first.split(" ")
        if len(parts) == 2:
            return [float(parts[0]), float(parts[1])]
    except (ValueError, AttributeError):
        pass
    return [-1.0, -1.0]


def llavabench_report(rows):
    """LLaVABench_score: relative score, VLM score and reference score, rounded to 0.1."""
    cats = ["overall"] + _sorted_values(rows, "category")
    out = []
    for c in cats:
        sub = rows if c == "overall" else [r for r in rows if r.get("category") == c]
        s = mean([r["score"] for r in sub])
        g = mean([r["gpt4_score"] for r in sub])
        out.append({"split": c,
                    "Relative Score (main)": _round1(s / g * 100 if g else NAN),
                    "VLM Score": _round1(s * 10), "GPT4 Score": _round1(g * 10)})
    return ["split", "Relative Score (main)", "VLM Score", "GPT4 Score"], out


def _round1(x):
    return NAN if math.isnan(x) else float(np.round(x, 1))
