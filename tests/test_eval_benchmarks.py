"""The table of benchmarks (tgllava/eval/benchmarks.py) is the only place a dataset family is written.

A family put in the table inside the test - nowhere else - must be what name resolution, the
prompt, the answer budget and scoring use.
"""

import os

from eval_testing import FakeModel, png_b64, write_tsv

import tgllava.eval as ev
from tgllava.eval import benchmarks
from tgllava.eval.benchmarks import VQA, Benchmark, find_benchmark
from tgllava.eval.prompts import build_item_prompt

SUFFIX = "\nName one colour."


def _toy_prompt(row):
    return row["question"] + SUFFIX


def _toy_score(job):
    hits = [float(r["prediction"] == r["answer"]) for r in job.rows]
    job.record("_toy", job.columns + ["hit"], [dict(r, hit=repr(h)) for r, h in zip(job.rows, hits)])
    job.table("_acc", ["Overall"], [{"Overall": sum(hits) / len(hits)}])
    job.headline["Overall"] = sum(hits) / len(hits)


TOY = Benchmark("toy", VQA, r"^toybench", _toy_prompt, 7, _toy_score)


def test_a_family_put_in_the_table_is_used_end_to_end(tmp_path, monkeypatch):
    assert find_benchmark("ToyBench_VAL").scorer == "vqa"  # unknown before it is registered
    monkeypatch.setattr(benchmarks, "BENCHMARKS", (TOY,) + benchmarks.BENCHMARKS)
    monkeypatch.setenv("LMUData", str(tmp_path / "no_lmu_data"))
    data = write_tsv(str(tmp_path / "ToyBench_VAL.tsv"), [
        dict(index=0, image=png_b64(), question="[say: red] Which colour?", answer="red"),
        dict(index=1, image=png_b64((0, 0, 200)), question="[say: green] Which colour?", answer="blue")])

    ds = ev.load_dataset(data)
    assert ds.benchmark is TOY and (ds.kind, ds.scorer) == (VQA, "toy")
    prompt, guide = build_item_prompt(ds, ds.rows[0], "vlmevalkit")
    assert guide == "[say: red] Which colour?" + SUFFIX and prompt.endswith(SUFFIX + " ASSISTANT: ")

    model = FakeModel(name="fake")
    res = ev.run(model, data, work_dir=str(tmp_path / "wd"), progress=False, prompt_style="vlmevalkit")
    assert {kw["max_new_tokens"] for kw in model.kwargs} == {7}
    assert res["scorer"] == "toy" and res["kind"] == VQA and res["headline"] == {"Overall": 0.5}
    base = os.path.splitext(res["predictions"])[0]
    assert sorted(res["files"]) == sorted([base + "_toy" + os.path.splitext(res["predictions"])[1],
                                           base + "_acc.csv"])

    # re-scoring by name alone (no dataset TSV to be found) resolves the family from the table too
    again = ev.score("ToyBench_VAL", res["predictions"], work_dir=str(tmp_path / "again"))
    assert again["scorer"] == "toy" and again["headline"] == {"Overall": 0.5}
