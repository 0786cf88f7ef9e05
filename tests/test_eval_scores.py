"""Scores from predictions files, checked against numbers worked out by hand.

Each test writes a tiny dataset TSV and a predictions file (the dataset's
columns but `image`, plus `prediction`), scores it with tgllava.eval.score
and compares the score files and numbers with the hand computation in
the comments.
"""

import json
import os

import pytest
from eval_testing import png_b64, write_tsv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tgllava.eval import metrics as M
from tgllava.eval.errors import DatasetError
from tgllava.eval.scoring import format_summary, score
from tgllava.eval.tables import read_table, write_table

IMG = png_b64()
IMG2 = png_b64((0, 90, 0))


def _score(tmp_path, name, rows, preds, judge=None, ext="tsv", drop=(), **kw):
    """Write dataset + predictions files, score them; returns (result, folder)."""
    data = write_tsv(str(tmp_path / f"{name}.tsv"), [dict(r, image=r.get("image", IMG)) for r in rows])
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    pred_rows = [{k: v for k, v in r.items() if k not in ("image",) + tuple(drop)} for r in rows]
    for r, p in zip(pred_rows, preds):
        r["prediction"] = p
    cols = []
    for r in pred_rows:
        cols += [k for k in r if k not in cols]
    pred_path = str(out / f"m_{name}.{ext}")
    write_table(pred_path, cols, [{k: (None if v is None else str(v)) for k, v in r.items()} for r in pred_rows])
    return score(data, pred_path, judge=judge, **kw), out


def _csv(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8")


# ---------------------------------------------------------------- MCQ

def _mcq_row(i, answer, split, cat, l2, hint=None):
    return dict(index=i, question=f"Which animal is it? ({i})", hint=hint, A="cat", B="dog", C="rabbit",
                D="horse", answer=answer, category=cat, split=split, **{"l2-category": l2})


def test_mcq_accuracy_per_split_category_and_l2(tmp_path):
    rows = [_mcq_row(0, "A", "dev", "catX", "L1", hint="A pet."),
            _mcq_row(1, "B", "dev", "catX", "L1"),
            _mcq_row(2, "C", "dev", "catY", "L2", hint="It hops."),
            _mcq_row(3, "D", "test", "catY", "L2"),
            _mcq_row(4, "A", "test", "catX", "L1"),
            _mcq_row(5, "B", "test", "catY", "L1")]
    preds = ["A",                                   # right
             "The answer is (C).",                  # C, wrong
             "a rabbit",                            # option text -> C, right
             "I cannot tell",                       # nothing -> wrong
             "A. cat",                              # right
             "Sorry, I can't help with images of people yet."]  # refusal Z -> wrong
    # dev: 1,0,1 -> 2/3; test: 0,1,0 -> 1/3
    # L1 rows 0,1 | 4,5 -> 1/2 | 1/2;  L2 rows 2 | 3 -> 1 | 0
    # catX rows 0,1 | 4 -> 1/2 | 1;    catY rows 2 | 3,5 -> 1 | 0
    res, out = _score(tmp_path, "ScienceQA_VAL", rows, preds, drop=("answer",))
    assert res["kind"] == "MCQ" and res["judge"] == "exact_matching" and not res["exact_matching"]
    assert _csv(out / "m_ScienceQA_VAL_acc.csv") == (
        '"split","Overall","L1","L2","catX","catY"\n'
        '"dev","0.6666666666666666","0.5","1.0","0.5","1.0"\n'
        '"test","0.3333333333333333","0.5","0.0","1.0","0.0"\n')
    # the headline and the printed table hold the csv's numbers, not percentages of them
    assert res["headline"] == {"Overall[dev]": 0.6666666666666666, "Overall[test]": 0.3333333333333333}
    summary = format_summary([res]).splitlines()
    assert "value (as in the score csv)" in summary[0]
    assert summary[2].split() == ["ScienceQA_VAL", "Overall[dev]", "0.666667", "exact_matching"]
    cols, rec = read_table(str(out / "m_ScienceQA_VAL_exact_matching_result.tsv"))
    assert cols[-2:] == ["hit", "log"] and [r["hit"] for r in rec] == ["1", "0", "1", "0", "1", "0"]


def _circ(i, order, answer, cat):
    opts = dict(zip("ABC", order))
    return dict(index=i, question=f"What is in picture {i % 1000000}?", answer=answer, category=cat,
                split="dev", **opts)


CIRCULAR_ROWS = [
    _circ(0, ["cat", "dog", "pig"], "A", "coarse_perception"),
    _circ(1, ["cat", "dog", "pig"], "B", "coarse_perception"),
    _circ(2, ["cat", "dog", "pig"], "A", "logic_reasoning"),
    _circ(3, ["cat", "dog", "pig"], "A", "logic_reasoning"),
    _circ(1000000, ["dog", "pig", "cat"], "C", "coarse_perception"),
    _circ(1000001, ["dog", "pig", "cat"], "A", "coarse_perception"),
    _circ(1000002, ["dog", "pig", "cat"], "B", "logic_reasoning"),
    _circ(2000000, ["pig", "cat", "dog"], "B", "coarse_perception"),
]
CIRCULAR_PREDS = ["A", "B", "A", "A",
                  "C", "B",                 # group 1: second rotation wrong
                  "I am not sure",          # group 2: unresolved without a judge
                  "B"]


def test_mmbench_circular_exact_matching(tmp_path):
    # groups: 0 -> A,C,B all right -> 1; 1 -> B right, B wrong -> 0;
    # 2 -> A right, unresolved -> 0 (exact matching); 3 -> A -> 1
    res, out = _score(tmp_path, "MMBench_DEV_EN", CIRCULAR_ROWS, CIRCULAR_PREDS)
    assert _csv(out / "m_MMBench_DEV_EN_acc.csv") == (
        '"split","Overall","CP","LR"\n"dev","0.5","0.5","0.5"\n')
    _, rec = read_table(str(out / "m_MMBench_DEV_EN_exact_matching_result.tsv"))
    assert [(r["index"], r["hit"]) for r in rec] == [("0", "1"), ("1", "0"), ("2", "0"), ("3", "1")]


def test_mmbench_circular_with_a_judge(tmp_path):
    asked = []

    def judge(prompt):
        asked.append(prompt)
        return "B"

    # the judge is asked only about the unresolved rotation of group 2 and says B (right);
    # group 1 fails during pre-fetching, before any judge call -> hits 1,0,1,1
    res, out = _score(tmp_path, "MMBench_DEV_EN", CIRCULAR_ROWS, CIRCULAR_PREDS, judge=judge)
    assert len(asked) == 1 and "I am not sure" in asked[0] and "A. dog\nB. pig\nC. cat" in asked[0]
    assert res["judge"] == "judge"
    assert res["scores"] == {"dev/Overall": 0.75, "dev/CP": 0.5, "dev/LR": 1.0}
    assert os.path.exists(out / "m_MMBench_DEV_EN_judge_result.tsv")
    # re-scoring reads the judge's replies from the cache instead of asking again
    _score(tmp_path, "MMBench_DEV_EN", CIRCULAR_ROWS, CIRCULAR_PREDS, judge=judge)
    assert len(asked) == 1


def test_mmmu_open_questions(tmp_path):
    rows = [dict(index=0, question="How many?", A=None, B=None, answer="4"),
            dict(index=1, question="Which?", A="x", B="y", answer="B")]
    # open question: A becomes the answer text "4", B "Other Answers", the truth A
    res, _ = _score(tmp_path, "MMMU_DEV_VAL", rows, ["4", "B"])
    assert res["scores"]["none/Overall"] == 1.0


def test_predictions_not_in_the_dataset_are_refused(tmp_path):
    rows = [_mcq_row(0, "A", "dev", "c", "l")]
    data = write_tsv(str(tmp_path / "ScienceQA_VAL.tsv"), [dict(rows[0], image=IMG)])
    pred = str(tmp_path / "p.tsv")
    write_table(pred, ["index", "prediction"], [{"index": "9", "prediction": "A"}])
    with pytest.raises(DatasetError, match="not in dataset"):
        score(data, pred)
    write_table(pred, ["index"], [{"index": "0"}])
    with pytest.raises(DatasetError, match="prediction"):
        score(data, pred)


# ---------------------------------------------------------------- yes / no

MME_ROWS = [
    dict(index=0, image_path="a.jpg", category="OCR", question="Is it 'stop'?", answer="Yes"),
    dict(index=1, image_path="a.jpg", category="OCR", question="Is it 'go'?", answer="No"),
    dict(index=2, image_path="b.jpg", category="OCR", question="Is it 'exit'?", answer="Yes"),
    dict(index=3, image_path="b.jpg", category="OCR", question="Is it 'in'?", answer="No"),
    dict(index=4, image_path="c.jpg", category="code_reasoning", question="Prints 3?", answer="Yes"),
    dict(index=5, image_path="c.jpg", category="code_reasoning", question="Prints 4?", answer="No"),
]
MME_PREDS = ["Yes", "No", "No", "No, it is not.", "yes", "Yes"]


def test_mme_acc_plus_and_sums(tmp_path):
    # OCR: acc 3/4 = 75, acc+ images a (both right) b (one wrong) -> 50: 125
    # code_reasoning: acc 1/2 = 50, acc+ 0: 50; perception 125, reasoning 50
    res, out = _score(tmp_path, "MME", MME_ROWS, MME_PREDS)
    assert _csv(out / "m_MME_score.csv") == (
        '"perception","reasoning","OCR","code_reasoning"\n"125.0","50.0","125.0","50.0"\n')
    assert res["headline"] == {"perception": 125.0, "reasoning": 50.0}
    _, rec = read_table(str(out / "m_MME_auxmatch.tsv"))
    assert [r["extracted"] for r in rec] == ["Yes", "No", "No", "No", "Yes", "Yes"]
    assert [r["score"] for r in rec] == ["True", "True", "False", "True", "True", "False"]


def test_mme_pairs_by_image_when_there_is_no_image_path(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "image_path"} for r in MME_ROWS]
    for r, img in zip(rows, [IMG, IMG, IMG2, IMG2, png_b64((1, 1, 1)), png_b64((1, 1, 1))]):
        r["image"] = img
    res, _ = _score(tmp_path, "MME", rows, MME_PREDS)
    assert res["headline"] == {"perception": 125.0, "reasoning": 50.0}


def _hb(l2, cat, s, f, q, answer):
    return dict(index=f"{l2}_{cat}_0_{s}_{f}_{q}", category=cat, question=f"q {s}{f}{q}?",
                answer=answer, **{"l2-category": l2})


def test_hallusionbench_aacc_facc_qacc(tmp_path):
    rows = [_hb("VS", "chart", 0, 0, 0, "Yes"), _hb("VS", "chart", 0, 0, 1, "No"),
            _hb("VS", "chart", 0, 1, 0, "No"), _hb("VS", "chart", 0, 1, 1, "Yes"),
            _hb("VD", "figure", 1, 0, 0, "Yes"), _hb("VD", "figure", 1, 1, 0, "No")]
    preds = ["Yes", "No", "Yes", "Yes", "I don't know", "no"]
    # right: 1 1 0 1 0 1 -> aAcc 4/6
    # figures VS_0_0 [1,1] VS_0_1 [0,1] VD_1_0 [0] VD_1_1 [1] -> fAcc 2/4
    # questions VS_0_0 [1,0] VS_0_1 [1,1] VD_1_0 [0,1] -> qAcc 1/3
    res, out = _score(tmp_path, "HallusionBench", rows, preds)
    cols, table = read_table(str(out / "m_HallusionBench_score.csv"))
    got = {r["split"]: tuple(float(r[c]) for c in ("aAcc", "fAcc", "qAcc")) for r in table}
    assert [r["split"] for r in table] == ["Overall", "chart", "figure", "VD", "VS"]
    assert got["Overall"] == pytest.approx((400 / 6, 50.0, 100 / 3))
    assert got["chart"] == got["VS"] == pytest.approx((75.0, 50.0, 50.0))
    assert got["figure"] == got["VD"] == pytest.approx((50.0, 50.0, 0.0))
    assert res["headline"] == pytest.approx({"aAcc": 400 / 6, "fAcc": 50.0, "qAcc": 100 / 3})


def test_pope_f1_precision_recall(tmp_path):
    rows = [dict(index=1, question="Is there a dog?", answer="Yes", category="random"),
            dict(index=2, question="Is there a cat?", answer="No", category="random"),
            dict(index=3, question="Is there a car?", answer="Yes", category="popular"),
            dict(index=4, question="Is there a bus?", answer="No", category="popular"),
            dict(index=5, question="Is there a cup?", answer="Yes", category="adversarial,random"),
            dict(index=6, question="Is there a pen?", answer="No", category="adversarial")]
    preds = ["Yes", "Yes", "No", "No", "Yes", "I think so"]
    # row 5 counts for both its categories, overall too: 7 rows
    # TP 1,5,5  FP 2  FN 3  (6: Unknown -> predicted no, and its score is wrong)
    # precision 3/4 recall 3/4 F1 0.75; acc: rows right 1,4,5,5 -> 4/7
    res, out = _score(tmp_path, "POPE", rows, preds)
    _, table = read_table(str(out / "m_POPE_score.csv"))
    got = {r["split"]: {k: float(v) for k, v in r.items() if k != "split"} for r in table}
    assert [r["split"] for r in table] == ["Overall", "adversarial", "popular", "random"]
    assert got["Overall"] == pytest.approx({"Overall": 75.0, "acc": 400 / 7, "precision": 75.0, "recall": 75.0})
    assert got["adversarial"] == pytest.approx({"Overall": 100.0, "acc": 50.0, "precision": 100.0, "recall": 100.0})
    assert got["popular"] == pytest.approx({"Overall": 0.0, "acc": 50.0, "precision": 0.0, "recall": 0.0})
    assert got["random"] == pytest.approx({"Overall": 80.0, "acc": 200 / 3, "precision": 200 / 3, "recall": 100.0})
    assert res["headline"] == pytest.approx({"F1": 75.0, "acc": 400 / 7})


def test_yes_no_judge_only_for_unknowns(tmp_path):
    asked = []

    def judge(prompt):
        asked.append(prompt)
        return "Yes."

    rows = [dict(index=1, question="Dog?", answer="Yes", category="random"),
            dict(index=2, question="Cat?", answer="Yes", category="random")]
    res, _ = _score(tmp_path, "POPE", rows, ["Yes", "It might be"], judge=judge)
    assert len(asked) == 1 and "It might be" in asked[0]
    assert res["headline"]["acc"] == 100.0


# ---------------------------------------------------------------- VQA

def test_ocrbench_substring_rules(tmp_path):
    hme = "Handwritten Mathematical Expression Recognition"
    rows = [dict(index=0, category="Regular Text Recognition", question="Read it.", answer="['Stop']"),
            dict(index=1, category="Scene Text-centric VQA", question="Brand?", answer="['coca cola', 'coke']"),
            dict(index=2, category="Doc-oriented VQA", question="Year?", answer="['1999']"),
            dict(index=3, category=hme, question="Formula?", answer="['x^2 + 1']"),
            dict(index=4, category=hme, question="Formula?", answer="['A b']"),
            dict(index=5, category="Key Information Extraction", question="Total?", answer="['Total: 5']")]
    preds = ["The sign says STOP.",      # case-insensitive substring: 1
             "Coke",                     # any of the answers: 1
             "2000",                     # 0
             "The formula is x^2+1",     # spaces dropped for formulas: 1
             "ab",                       # but case kept for formulas: 0
             "Total:\n5"]                # newlines become spaces: 1
    res, out = _score(tmp_path, "OCRBench", rows, preds)
    final = json.load(open(out / "m_OCRBench_score.json"))
    assert final == {"Text Recognition": 1, "Scene Text-centric VQA": 1, "Doc-oriented VQA": 0,
                     "Key Information Extraction": 1, hme: 1, "Final Score": 4, "Final Score Norm": 0.4}
    assert res["headline"] == {"Final Score": 4}
    assert os.path.exists(out / "m_OCRBench_score.csv")


def test_textvqa_vqa_accuracy(tmp_path):
    rows = [dict(index=0, question="What does it say?", answer=str(["stop"] * 3 + [f"w{i}" for i in range(7)])),
            dict(index=1, question="How many?", answer=str(["2"] + ["three"] * 9)),
            dict(index=2, question="What animal?", answer=str(["cat"] * 10))]
    preds = ["Stop.", "two", "The cat"]
    # row 0: the 3 'stop' answers see 2 others -> 2/3 each, the 7 others see 3 -> 1: 0.9
    # row 1: 'two' -> '2'; the '2' answer sees none -> 0, the 9 others see 1 -> 1/3: 0.3
    # row 2: 'the cat' -> 'cat' matches all: 1.0       overall (0.9+0.3+1)/3
    res, out = _score(tmp_path, "TextVQA_VAL", rows, preds)
    assert res["headline"]["Overall"] == pytest.approx(220 / 3)
    _, rec = read_table(str(out / "m_TextVQA_VAL_results.tsv"))
    assert [float(r["eval_score"]) for r in rec] == pytest.approx([0.9, 0.3, 1.0])
    assert _csv(out / "m_TextVQA_VAL_acc.csv").startswith('"Overall"\n')


def test_gqa_exact_accuracy_and_vqa_helpers(tmp_path):
    rows = [dict(index=0, question="Where?", answer="left"), dict(index=1, question="What?", answer="cat")]
    res, _ = _score(tmp_path, "GQA_TestDev_Balanced", rows, [" Left ", "a cat"])
    assert res["headline"]["Overall"] == 50.0
    assert M.relaxed_correct("10", "10.4") and not M.relaxed_correct("10", "11")
    assert M.relaxed_correct("0", "0") and M.relaxed_correct("Yes", "yes")
    assert M.anls_distance("hello", "hello") == 0.0
    assert M.vqa_hit([M.anls_distance("hello", "hellx")], "anls") == pytest.approx(0.8)
    assert M.vqa_hit([M.anls_distance("hello", "xyz")], "anls") == 0.0


MATHVISTA_ROWS = [
    dict(index=1, question="What fraction is blue?", question_type="multi_choice", answer_type="text",
         choices="['3/11', '8/11', '6/11']", answer="8/11", answer_option="B", task="figure QA",
         skills="['statistical reasoning', 'arithmetic reasoning']"),
    dict(index=2, question="Which number is missing?", question_type="free_form", answer_type="integer",
         choices=None, answer="14", answer_option=None, task="figure QA", skills="['arithmetic reasoning']"),
    dict(index=3, question="How many are left?", question_type="free_form", answer_type="integer",
         choices=None, answer="0", answer_option=None, task="math word problem", skills="['arithmetic reasoning']"),
    dict(index=4, question="How much money?", question_type="free_form", answer_type="float",
         choices=None, answer="1.45", answer_option=None, task="math word problem",
         skills="['arithmetic reasoning']"),
    dict(index=5, question="What colour?", question_type="free_form", answer_type="text",
         choices=None, answer="red", answer_option=None, task="math word problem",
         skills="['arithmetic reasoning']"),
]
MATHVISTA_PREDS = ["B", "14", "0", "$1.45", "red"]


def test_mathvista_without_a_judge(tmp_path):
    # prefetch: rows 1 (B) and 2 (14); row 3's right answer 0 is falsy, so not "prefetched"
    # but exact-matched; row 4 '$1.45' is not a float; row 5: text answers never match
    # (VLMEvalKit compares str(None)) -> hits 1,2,3 of 5
    res, out = _score(tmp_path, "MathVista_MINI", MATHVISTA_ROWS, MATHVISTA_PREDS)
    assert res["exact_matching"] and "exact-match" in res["note"]
    _, table = read_table(str(out / "m_MathVista_MINI_exact_matching_score.csv"))
    got = [(r["Task&Skill"], r["tot"], r["prefetch"], r["hit"], float(r["acc"])) for r in table]
    assert got == [("Overall", "5", "2", "3", 60.0), ("statistical reasoning", "1", "1", "1", 100.0),
                   ("arithmetic reasoning", "5", "2", "3", 60.0), ("figure QA", "2", "2", "2", 100.0),
                   ("math word problem", "3", "0", "1", pytest.approx(100 / 3))]
    assert "exact match" in format_summary([res])


def test_mathvista_with_a_judge(tmp_path):
    answers = {"How many are left?": "0", "How much money?": "1.45", "What colour?": "red"}

    def judge(prompt):
        return next(v for k, v in answers.items() if k in prompt)

    res, _ = _score(tmp_path, "MathVista_MINI", MATHVISTA_ROWS, MATHVISTA_PREDS, judge=judge)
    assert not res["exact_matching"]
    assert res["headline"]["acc"] == 80.0  # row 5 still counts wrong


def test_mmvet_exact_and_judged(tmp_path):
    rows = [dict(index=0, category="rec,ocr", question="What does the sign say?", answer="stop<OR>halt"),
            dict(index=1, category="math", question="Solve for x.", answer="-1<AND>-5")]
    preds = ["It says Halt.", "x = 3"]
    # exact match: 'halt' is one of the <OR> answers -> 1.0; neither -1 nor -5 in 'x = 3' -> 0.0
    res, out = _score(tmp_path, "MMVet", rows, preds)
    assert res["exact_matching"]
    _, t1 = read_table(str(out / "m_MMVet_exact_matching_score.csv"))
    # MMVet_acc counts a row whose whole category is one capability ("math") twice, under
    # the capability and under the category combination - kept as VLMEvalKit does it
    assert [(r["Category"], r["tot"], r["acc"]) for r in t1] == [
        ("rec", "1", "100.0"), ("ocr", "1", "100.0"), ("know", "0", None), ("gen", "0", None),
        ("spat", "0", None), ("math", "2", "0.0"), ("Overall", "2", "50.0")]
    _, t2 = read_table(str(out / "m_MMVet_exact_matching_score_fine.csv"))
    assert [(r["Category"], r["acc"]) for r in t2] == [("rec_ocr", "100.0"), ("math", "0.0"), ("Overall", "50.0")]
    res, _ = _score(tmp_path, "MMVet", rows, preds, judge=lambda p: "0.5")
    assert res["headline"]["acc"] == 50.0 and res["scores"]["rec/acc"] == 50.0


def test_llavabench_with_a_judge(tmp_path):
    rows = [dict(index=0, category="conv", caption="a dog", question="What is it?", gpt4_ans="A dog."),
            dict(index=1, category="detail", caption="a cat", question="Describe it.", gpt4_ans="A cat.")]

    def judge(prompt):
        return "8 6\nclose" if "What is it?" in prompt else "7 7\nsame"

    # overall: VLM 6.5, reference 7.5 -> relative 86.7; conv 75.0; detail 100.0
    res, out = _score(tmp_path, "LLaVABench", rows, ["A dog", "A cat"], judge=judge)
    assert _csv(out / "m_LLaVABench_score.csv") == (
        '"split","Relative Score (main)","VLM Score","GPT4 Score"\n'
        '"overall","86.7","65.0","75.0"\n"conv","75.0","60.0","80.0"\n"detail","100.0","70.0","70.0"\n')
    assert res["headline"] == {"Relative Score": 86.7}
    res, out = _score(tmp_path, "LLaVABench", rows, ["A dog.", "no"])
    assert res["exact_matching"] and res["headline"]["Overall"] == 50.0
    assert os.path.exists(out / "m_LLaVABench_exact_matching_score.csv")


def test_llavabench_parse():
    assert M.llavabench_parse("8 6\nbecause") == [8.0, 6.0]
    assert M.llavabench_parse("8,6") == [8.0, 6.0]
    assert M.llavabench_parse("8, 6") == [-1.0, -1.0]  # ", " -> two spaces -> three fields
    assert M.llavabench_parse("Assistant 1: 8") == [-1.0, -1.0]


# ---------------------------------------------------------------- files made elsewhere

def test_vlmevalkit_xlsx_predictions_with_typed_cells(tmp_path):
    import openpyxl

    rows = [_mcq_row(i, "AB"[i % 2], "dev", "c", "l") for i in range(4)]
    data = write_tsv(str(tmp_path / "AI2D_TEST.tsv"), [dict(r, image=IMG) for r in rows])
    wb = openpyxl.Workbook()
    ws = wb.active
    cols = ["index", "question", "A", "B", "C", "D", "answer", "category", "split", "l2-category", "prediction"]
    ws.append(cols)
    for r, p in zip(rows, ["A", "B", "B", "nonsense"]):
        ws.append([r["index"]] + [r[c] for c in cols[1:-1]] + [p])  # index as a number, as pandas writes it
    path = str(tmp_path / "LLaVA_AI2D_TEST.xlsx")
    wb.save(path)
    res = score(data, path, work_dir=str(tmp_path / "scores"))
    assert res["scores"]["dev/Overall"] == 0.5
    assert os.path.exists(tmp_path / "scores" / "LLaVA_AI2D_TEST_acc.csv")
    assert os.path.exists(tmp_path / "scores" / "LLaVA_AI2D_TEST_exact_matching_result.xlsx")


def test_scoring_without_the_dataset_tsv(tmp_path):
    pred = str(tmp_path / "m_POPE.tsv")
    write_table(pred, ["index", "question", "answer", "category", "prediction"],
                [{"index": "1", "question": "Dog?", "answer": "Yes", "category": "random", "prediction": "yes"},
                 {"index": "2", "question": "Cat?", "answer": "No", "category": "random", "prediction": "yes"}])
    res = score("POPE_not_downloaded", pred)
    assert res["kind"] == "Y/N" and res["headline"]["acc"] == 50.0
