"""Resume as a careful user meets it (issue 21): a resume refuses any setting that changes answers,
one run at a time per output, and a bad row is recorded as failed instead of stopping the run."""

import argparse
import base64
import json
import os
import shutil

import pytest
from eval_testing import FakeModel, png_b64, write_tsv

import tgllava
import tgllava.eval as ev
from tgllava.eval.errors import ShardError
from tgllava.eval.runner import checkpoint_path
from tgllava.eval.tables import read_table

IMGS = [png_b64((i * 40 % 256, 100, 50)) for i in range(6)]


def _mmbench(tmp_path, images=IMGS):
    rows = [dict(index=i, image=img, question=f"Q{i} [say: {'ABCD'[i % 4]}]", A="a", B="b", C="c", D="d",
                 answer="ABCD"[i % 4], category="c", split="dev") for i, img in enumerate(images)]
    return write_tsv(str(tmp_path / "MMBench_DEV_EN.tsv"), rows)


# ---------------------------------------------------------------- item 1: settings that change answers

def _checkpoint_folders(tmp_path):
    """An LLM folder and a CLIP folder with the files a load reads (contents do not matter to the fake)."""
    llm, clip = tmp_path / "ckpt" / "llm", tmp_path / "ckpt" / "clip"
    for folder in (llm, clip):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": folder.name}))
        (folder / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (llm / "tokenizer.json").write_text("{}")
    (llm / "README.md").write_text("notes")
    return llm, clip


class FolderModel(FakeModel):
    """A fake with what identifies a loaded tgllava.Model: its folders, dtype and architecture sizes."""

    def __init__(self, llm_dir, clip_dir, dtype="float32", p_latents=64):
        super().__init__(name="fake")
        self.llm_dir, self.clip_dir, self.dtype = str(llm_dir), str(clip_dir), dtype
        self.sizes = {"hidden": 64, "layers": 2, "p_latents": p_latents}


def _write(path, text):
    path.write_text(text)


def _rewrite_keeping_size_and_mtime(path, data):
    st = os.stat(path)
    assert len(data) == st.st_size
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


CHANGES = {
    # what differs: (how to make it differ, text the refusal must hold)
    "dtype": (lambda llm, clip: dict(model=FolderModel(llm, clip, dtype="int4")), "dtype = 'float32'"),
    "n_latents": (lambda llm, clip: dict(model=FolderModel(llm, clip, p_latents=32)), "n_latents = 64"),
    "use_fom": (lambda llm, clip: dict(use_fom=False), "use_fom = True"),
    "use_dp": (lambda llm, clip: dict(use_dp=False), "use_dp = True"),
    "max_new_tokens": (lambda llm, clip: dict(max_new_tokens=7), "max_new_tokens = 128"),
    "prompt_style": (lambda llm, clip: dict(prompt_style="vlmevalkit", conv_mode=None), "prompt_style = 'llava'"),
    "conv_mode": (lambda llm, clip: dict(conv_mode="llava_v1"), "conv_mode = 'vicuna_v1'"),
    "weights": (lambda llm, clip: _rewrite_keeping_size_and_mtime(llm / "model.safetensors", bytes(256 * 64)),
                "model.llm_files.model.safetensors"),
    "llm config": (lambda llm, clip: _write(llm / "config.json", json.dumps({"model_type": "lm"})),
                   "model.llm_files.config.json"),
    "added weight file": (lambda llm, clip: _write(llm / "extra.safetensors", "x"),
                          "model.llm_files.extra.safetensors = (absent)"),
    "tokenizer": (lambda llm, clip: _write(llm / "tokenizer.json", '{"x": 1}'), "model.llm_files.tokenizer.json"),
    "clip tower weights": (lambda llm, clip: _rewrite_keeping_size_and_mtime(clip / "model.safetensors",
                                                                             bytes(256 * 64)),
                           "model.clip_files.model.safetensors"),
    "another clip tower": (lambda llm, clip: dict(model=FolderModel(llm, shutil.copytree(clip, clip.parent / "c2"))),
                           "model.clip_dir"),
    "tgllava version": (lambda llm, clip: setattr(tgllava, "__version__", "0.0.0-other"), "tgllava = "),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_resume_refuses_every_setting_that_changes_answers(tmp_path, monkeypatch, change):
    monkeypatch.setattr(tgllava, "__version__", tgllava.__version__)  # restored after the test
    data = _mmbench(tmp_path)
    llm, clip = _checkpoint_folders(tmp_path)
    wd = str(tmp_path / "wd")
    kwargs = dict(work_dir=wd, progress=False, conv_mode="vicuna_v1", limit=3)
    ev.run(FolderModel(llm, clip), data, **kwargs)
    (llm / "README.md").write_text("edited notes")  # not a file a load reads: no effect
    same = FolderModel(llm, clip)
    ev.run(same, data, **kwargs)
    assert same.items == []  # unchanged settings resume (to nothing)

    make, expected = CHANGES[change]
    changed = make(llm, clip) or {}
    model = changed.pop("model", FolderModel(llm, clip))
    with pytest.raises(ShardError) as e:
        ev.run(model, data, **{**kwargs, **changed})
    assert model.items == []
    ckpt = checkpoint_path(wd, "fake", "MMBench_DEV_EN")
    message = str(e.value)
    assert expected in message and f"delete {ckpt}" in message and "another work_dir" in message


def test_a_checkpoint_of_an_older_tgllava_is_not_resumed(tmp_path):
    data = _mmbench(tmp_path)
    wd = str(tmp_path / "wd")
    ev.run(FakeModel(name="fake"), data, work_dir=wd, progress=False, prompt_style="vlmevalkit", limit=3)
    ckpt = checkpoint_path(wd, "fake", "MMBench_DEV_EN")
    lines = open(ckpt, encoding="utf-8").read().splitlines()
    header = json.loads(lines[0])
    header["tgllava_eval_checkpoint"] = 1
    header["settings"] = {k: header["settings"][k] for k in
                          ("prompt_style", "conv_mode", "max_new_tokens", "temperature", "use_fom", "use_dp")}
    open(ckpt, "w", encoding="utf-8").write("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    with pytest.raises(ShardError, match=r"written with tgllava = \(not recorded: an older tgllava\)"):
        ev.run(FakeModel(name="fake"), data, work_dir=wd, progress=False, prompt_style="vlmevalkit", limit=3)


def test_shards_made_with_different_settings_are_not_merged(tmp_path):
    data = _mmbench(tmp_path)
    wd = str(tmp_path / "wd")
    ev.run(FakeModel(name="fake"), data, work_dir=wd, progress=False, prompt_style="vlmevalkit", shard="0/2")
    with pytest.raises(ShardError, match="written with max_new_tokens = 128, but this run has max_new_tokens = 5"):
        ev.run(FakeModel(name="fake"), data, work_dir=wd, progress=False, prompt_style="vlmevalkit", shard="1/2",
               max_new_tokens=5)


# ---------------------------------------------------------------- item 2: one run per output

class RunsAnotherEval(FakeModel):
    """Starts a second run on the same output while its own first batch is being answered."""

    def __init__(self, data, wd, **other_settings):
        super().__init__(name="fake")
        self.data, self.wd, self.other_settings = data, wd, other_settings
        self.second = None

    def chat_batch(self, items, **kw):
        if self.second is None:
            try:
                ev.run(FakeModel(name="fake"), self.data, work_dir=self.wd, progress=False,
                       prompt_style="vlmevalkit", **self.other_settings)
                self.second = "ran"
            except ev.EvalError as e:
                self.second = e
        return super().chat_batch(items, **kw)


@pytest.mark.parametrize("other_settings", [{}, {"use_fom": False}])
def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(tmp_path, other_settings):
    data = _mmbench(tmp_path)
    wd = str(tmp_path / "wd")
    first = RunsAnotherEval(data, wd, **other_settings)
    res = ev.run(first, data, work_dir=wd, batch_size=2, progress=False, prompt_style="vlmevalkit")
    assert isinstance(first.second, ev.EvalError), first.second
    ckpt = checkpoint_path(wd, "fake", "MMBench_DEV_EN")
    assert f"another tgllava eval is running on {ckpt}" in str(first.second)
    assert "another work_dir" in str(first.second)
    # the first run's checkpoint holds one header, its own, and every answer once
    records = [json.loads(x) for x in open(ckpt, encoding="utf-8").read().splitlines()]
    assert ["tgllava_eval_checkpoint" in r for r in records] == [True] + [False] * 6
    assert records[0]["settings"]["use_fom"] is True and len({r["index"] for r in records[1:]}) == 6
    assert res["headline"] == {"Overall": 1.0}
    # the lock ends with the run: the next one proceeds
    again = FakeModel(name="fake")
    ev.run(again, data, work_dir=wd, progress=False, prompt_style="vlmevalkit")
    assert again.items == []


# ---------------------------------------------------------------- item 17: bad rows

def _with_bad_rows(tmp_path):
    """Rows 0, 3 and 5 good; 1 not a picture, 2 a short non-index cell, 4 a reference to a row without its own image."""
    not_a_picture = base64.b64encode(b"not a picture " * 8).decode()
    images = [IMGS[0], not_a_picture, "Zm9v!", IMGS[3], "2", IMGS[5]]
    return _mmbench(tmp_path, images)


class Streaming(FakeModel):
    """A fake with the continuous interface (answers in the order it reads the items)."""

    def answer_stream(self, keyed_items, max_batch, **kw):
        for key, item in keyed_items:
            self.calls.append([item])
            yield key, self.answer(item)


@pytest.mark.parametrize("model_class", [FakeModel, Streaming])
def test_bad_rows_fail_alone_and_are_retried(tmp_path, model_class):
    data = _with_bad_rows(tmp_path)
    wd = str(tmp_path / "wd")
    model = model_class(name="fake")
    res = ev.run(model, data, work_dir=wd, batch_size=2, progress=False, prompt_style="vlmevalkit")
    assert sorted(it["prompt"].split(" [say")[0][-2:] for it in model.items) == ["Q0", "Q3", "Q5"]
    failed = {r["index"]: r["reason"] for r in res["failed"]}
    assert sorted(failed) == ["1", "2", "4"]
    assert "row 1: its image cell" in failed["1"] and "not a picture" in failed["1"]
    assert "row 2: its image cell 'Zm9v!'" in failed["2"]  # not read as a reference to another row
    assert "row 4 reuses the image of row 2, which has no image of its own" in failed["4"]
    assert not any("BytesIO" in r for r in failed.values())
    # no score from an incomplete run (an empty answer can even match option text 'a'), and it says so
    assert res["headline"] == {} and res["files"] == []
    assert res["note"] == ("MMBench_DEV_EN: 3 of 6 rows failed (see each one's reason), so it is not scored; "
                           "fix them and rerun to retry them")
    assert [r["prediction"] for r in read_table(res["predictions"])[1]] == ["A", None, None, "D", None, "B"]

    # the next run retries only the failed rows: with the pictures fixed they are answered
    _mmbench(tmp_path)
    again = model_class(name="fake")
    res = ev.run(again, data, work_dir=wd, batch_size=2, progress=False, prompt_style="vlmevalkit")
    assert sorted(it["prompt"].split(" [say")[0][-2:] for it in again.items) == ["Q1", "Q2", "Q4"]
    assert res["failed"] == [] and res["headline"] == {"Overall": 1.0} and res["note"] is None


def test_bad_rows_in_shards_are_merged_as_failed(tmp_path):
    data = _with_bad_rows(tmp_path)
    wd = str(tmp_path / "wd")
    r0 = ev.run(FakeModel(name="fake"), data, work_dir=wd, progress=False, prompt_style="vlmevalkit", shard="0/2")
    r1 = ev.run(FakeModel(name="fake"), data, work_dir=wd, progress=False, prompt_style="vlmevalkit", shard="1/2")
    assert r0["merged"] is False and r0["failed"]
    assert sorted(r["index"] for r in r1["failed"]) == ["1", "2", "4"] and r1["headline"] == {}
    merged = ev.merge(wd, "fake", data)
    assert merged["failed"] == r1["failed"]


def test_cli_counts_failed_rows_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    data = _with_bad_rows(tmp_path)
    monkeypatch.setattr(tgllava, "load", lambda path, **kw: FakeModel(), raising=False)
    parser = argparse.ArgumentParser(prog="tgllava")
    ev.add_subparser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--model", str(tmp_path / "ckpt"), "--data", data, "--work-dir",
                              str(tmp_path / "wd"), "--no-progress", "--prompt-style", "vlmevalkit"])
    assert args.func(args) == 1
    out, err = capsys.readouterr()
    summary = [line.split() for line in out.splitlines()]
    assert ["MMBench_DEV_EN", "failed", "rows", "3", "exact_matching"] in summary
    assert "note: MMBench_DEV_EN: 3 of 6 rows failed (see each one's reason), so it is not scored" in out
    assert "tgllava eval: failed: MMBench_DEV_EN: row 2: its image cell 'Zm9v!'" in err
    assert "3 rows failed; fix them and rerun the same command to retry them" in err
