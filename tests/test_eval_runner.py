"""The evaluation loop with a fake model: batching, resume, shards, merge, CLI."""

import argparse
import filecmp
import json
import os
import sys

import pytest
from eval_testing import FakeModel, png_b64, write_tsv

import tgllava
import tgllava.eval as ev
from tgllava.eval.errors import ShardError
from tgllava.eval.runner import checkpoint_path
from tgllava.eval.shard import detect_shard, parse_shard, partition, resolve_device
from tgllava.eval.tables import read_table

COLORS = [(i * 40 % 256, 100, 200 - i * 20) for i in range(6)]
IMGS = [png_b64(c) for c in COLORS]


def _mmbench(tmp_path):
    """16 rows: 6 pictures, 6 main questions and 10 rotations pointing at them."""
    rows = []
    for i in range(6):
        ans = "ABCD"[i % 4]
        say = ans if i != 4 else "E"  # row 4 answers a letter that is not offered: wrong
        rows.append(dict(index=i, image=IMGS[i], question=f"Q{i} [say: {say}]", hint="Hint." if i % 2 else None,
                         A="a", B="b", C="c", D="d", answer=ans,
                         category=["coarse_perception", "logic_reasoning"][i % 2], split="dev"))
    for k in (1, 2):
        for i in range(6 if k == 1 else 4):
            r = dict(rows[i])
            r["index"] = k * 1000000 + i
            r["image"] = str(i)
            rows.append(r)
    return write_tsv(str(tmp_path / "MMBench_DEV_EN.tsv"), rows)


def _files(folder):
    return sorted(f for f in os.listdir(folder) if not f.endswith(".jsonl"))


def test_run_writes_predictions_and_scores(tmp_path):
    data = _mmbench(tmp_path)
    model = FakeModel(name="fake")
    res = ev.run(model, data, work_dir=str(tmp_path / "wd"), batch_size=4, progress=False,
                 prompt_style="vlmevalkit")
    folder = tmp_path / "wd" / "fake"
    # xlsx by default, as VLMEvalKit
    assert _files(folder) == ["fake_MMBench_DEV_EN.xlsx", "fake_MMBench_DEV_EN_acc.csv",
                              "fake_MMBench_DEV_EN_exact_matching_result.xlsx"]
    # groups 0,1,2,3,5 right in every rotation, group 4 wrong: 5/6, as the _acc.csv holds it
    assert res["headline"] == {"Overall": pytest.approx(5 / 6)}
    columns, rows = read_table(res["predictions"])
    assert columns == ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "split", "prediction"]
    assert rows[0]["prediction"] == "A" and len(rows) == 16
    # every prompt has one image, rows of a picture were scheduled together
    keys = [it["image_key"] for it in model.items]
    assert len(keys) == 16 and len(set(keys)) == 6
    firsts = [keys.index(k) for k in dict.fromkeys(keys)]
    assert all(keys[a:b] == [keys[a]] * (b - a) for a, b in zip(firsts, firsts[1:] + [16]))
    assert model.kwargs[0] == {"max_new_tokens": 128, "temperature": 0.0, "use_fom": True, "use_dp": True}
    it = model.items[0]
    assert it["text_guide"] == ("Q0 [say: A]\nA. a\nB. b\nC. c\nD. d\n"
                                "Answer with the option's letter from the given choices directly.")
    assert it["prompt"].endswith(" <image> " + it["text_guide"] + " ASSISTANT: ")


def test_batch_sizes_give_identical_files(tmp_path):
    data = _mmbench(tmp_path)
    outs = []
    for bs in (1, 3, 16):
        wd = tmp_path / f"wd{bs}"
        ev.run(FakeModel(name="fake"), data, work_dir=str(wd), batch_size=bs, progress=False,
               prompt_style="vlmevalkit")
        outs.append(wd / "fake")
    for other in outs[1:]:
        match, mismatch, errors = filecmp.cmpfiles(outs[0], other, _files(outs[0]), shallow=False)
        assert mismatch == [] and errors == []


def test_resume_after_a_kill(tmp_path):
    data = _mmbench(tmp_path)
    wd = str(tmp_path / "wd")
    crashing = FakeModel(name="fake", fail_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ev.run(crashing, data, work_dir=wd, batch_size=3, progress=False, prompt_style="vlmevalkit")
    assert len(crashing.items) == 6
    ckpt = checkpoint_path(wd, "fake", "MMBench_DEV_EN")
    # a kill in the middle of a write leaves a torn last line: it is dropped, not trusted
    with open(ckpt, "a", encoding="utf-8") as f:
        f.write('{"index": "5", "predic')
    done_before = {it["image_key"] + it["prompt"] for it in crashing.items}
    model = FakeModel(name="fake")
    res = ev.run(model, data, work_dir=wd, batch_size=3, progress=False, prompt_style="vlmevalkit")
    assert len(model.items) == 10
    assert not done_before & {it["image_key"] + it["prompt"] for it in model.items}
    clean = tmp_path / "clean"
    ev.run(FakeModel(name="fake"), data, work_dir=str(clean), batch_size=5, progress=False,
           prompt_style="vlmevalkit")
    assert filecmp.cmp(res["predictions"], clean / "fake" / "fake_MMBench_DEV_EN.xlsx", shallow=False)
    # a finished run resumes to nothing and rewrites the same files
    again = FakeModel(name="fake")
    ev.run(again, data, work_dir=wd, batch_size=3, progress=False, prompt_style="vlmevalkit")
    assert again.items == []
    lines = open(ckpt, encoding="utf-8").read().splitlines()
    assert all(json.loads(line) for line in lines)


KILLED_CHILD = """
import os, signal, sys
sys.path[:0] = [{root!r}, {tests!r}]  # the tested tgllava (installed or built in place), eval_testing
import tgllava.eval as ev
from eval_testing import FakeModel

class Dying(FakeModel):
    def chat_batch(self, items, **kw):
        if len(self.calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().chat_batch(items, **kw)

ev.run(Dying(name="fake"), {data!r}, work_dir={wd!r}, batch_size=3, progress=False, prompt_style="vlmevalkit")
"""


def test_resume_after_sigkill(tmp_path):
    import signal
    import subprocess
    data = _mmbench(tmp_path)
    wd = str(tmp_path / "wd")
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(tgllava.__file__)))
    tests = os.path.dirname(os.path.abspath(__file__))
    script = KILLED_CHILD.format(root=pkg_root, tests=tests, data=data, wd=wd)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    model = FakeModel(name="fake")
    res = ev.run(model, data, work_dir=wd, batch_size=3, progress=False, prompt_style="vlmevalkit")
    assert len(model.items) == 16 - 6
    clean = tmp_path / "clean"
    ref = ev.run(FakeModel(name="fake"), data, work_dir=str(clean), progress=False, prompt_style="vlmevalkit")
    assert filecmp.cmp(res["predictions"], ref["predictions"], shallow=False)


def test_changed_settings_are_refused(tmp_path):
    data = _mmbench(tmp_path)
    wd = str(tmp_path / "wd")
    ev.run(FakeModel(name="fake"), data, work_dir=wd, limit=3, progress=False, prompt_style="vlmevalkit")
    with pytest.raises(ShardError, match="settings"):
        ev.run(FakeModel(name="fake"), data, work_dir=wd, limit=3, progress=False, prompt_style="vlmevalkit",
               use_fom=False)


def test_two_shards_and_merge_equal_one_run(tmp_path):
    data = _mmbench(tmp_path)
    one = tmp_path / "one"
    ev.run(FakeModel(name="fake"), data, work_dir=str(one), batch_size=2, progress=False, prompt_style="vlmevalkit")
    two = tmp_path / "two"
    m0, m1 = FakeModel(name="fake"), FakeModel(name="fake")
    r0 = ev.run(m0, data, work_dir=str(two), batch_size=4, progress=False, prompt_style="vlmevalkit", shard=(0, 2))
    assert r0 == {"dataset": "MMBench_DEV_EN", "shard": [0, 2], "rows": len(m0.items), "merged": False, "failed": []}
    assert not os.path.exists(two / "fake" / "fake_MMBench_DEV_EN.xlsx")
    # the second shard comes from a launcher's environment and, being last, merges
    r1 = ev.run(m1, data, work_dir=str(two), batch_size=4, progress=False, prompt_style="vlmevalkit",
                environ={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert len(m0.items) + len(m1.items) == 16 and m0.items and m1.items
    assert not {it["image_key"] for it in m0.items} & {it["image_key"] for it in m1.items}
    assert r1["headline"] == {"Overall": pytest.approx(5 / 6)}
    names = _files(one / "fake")
    assert _files(two / "fake") == names
    match, mismatch, errors = filecmp.cmpfiles(one / "fake", two / "fake", names, shallow=False)
    assert mismatch == [] and errors == []
    # an explicit merge rebuilds the same files
    for n in names:
        os.unlink(two / "fake" / n)
    res = ev.merge(str(two), "fake", data)
    assert res["headline"] == r1["headline"]
    match, mismatch, errors = filecmp.cmpfiles(one / "fake", two / "fake", names, shallow=False)
    assert mismatch == [] and errors == []


def test_merge_with_a_missing_shard(tmp_path):
    data = _mmbench(tmp_path)
    ev.run(FakeModel(name="fake"), data, work_dir=str(tmp_path), progress=False, shard="0/3",
           prompt_style="vlmevalkit")
    with pytest.raises(ShardError, match="no prediction yet"):
        ev.merge(str(tmp_path), "fake", data)
    with pytest.raises(ShardError, match="no checkpoints"):
        ev.merge(str(tmp_path), "other", data)


def test_limit_and_json_format(tmp_path):
    data = _mmbench(tmp_path)
    model = FakeModel(name="fake")
    res = ev.run(model, data, work_dir=str(tmp_path / "wd"), limit=4, progress=False, pred_format="json",
                 prompt_style="vlmevalkit")
    assert len(model.items) == 4 and res["predictions"].endswith(".json")
    assert [r["index"] for r in json.load(open(res["predictions"]))] == ["0", "1", "2", "3"]
    assert res["scores"]["dev/Overall"] == 1.0  # groups 0-3, their rotations cut by the limit


def test_llava_style_and_tg_switches(tmp_path):
    data = write_tsv(str(tmp_path / "POPE.tsv"), [
        dict(index=i, image=IMGS[i], question=f"Is there a dog {i}? [say: {'Yes' if i % 2 else 'No'}]",
             answer="Yes", category="random") for i in range(4)])
    model = FakeModel(config={"model_type": "llava_llama"}, has_tg=False)
    res = ev.run(model, data, work_dir=str(tmp_path / "wd"), model_name="my/model", progress=False,
                 use_fom=False, use_dp=False, max_new_tokens=7)
    assert os.path.basename(os.path.dirname(res["predictions"])) == "my_model"
    assert model.kwargs[0] == {"max_new_tokens": 7, "temperature": 0.0, "use_fom": False, "use_dp": False}
    assert "USER: <image>\nIs there a dog 0?" in model.items[0]["prompt"]
    assert res["headline"]["acc"] == 50.0


def test_a_model_returning_the_wrong_count_is_an_error(tmp_path):
    data = _mmbench(tmp_path)

    class Bad(FakeModel):
        def chat_batch(self, items, **kw):
            return ["A"]

    with pytest.raises(ev.EvalError, match="answers for"):
        ev.run(Bad(name="bad"), data, work_dir=str(tmp_path), batch_size=2, progress=False,
               prompt_style="vlmevalkit")
    with pytest.raises(ValueError):
        ev.run(FakeModel(), data, batch_size=0)


def test_answer_objects_with_text_are_accepted(tmp_path):
    data = _mmbench(tmp_path)

    class Answer:
        def __init__(self, text):
            self.text = text

    class WithAnswers(FakeModel):
        def chat_batch(self, items, **kw):
            return [Answer(" " + a + "\n") for a in super().chat_batch(items, **kw)]

    res = ev.run(WithAnswers(name="fake"), data, work_dir=str(tmp_path / "a"), progress=False,
                 prompt_style="vlmevalkit")
    ref = ev.run(FakeModel(name="fake"), data, work_dir=str(tmp_path / "b"), progress=False,
                 prompt_style="vlmevalkit")
    assert filecmp.cmp(res["predictions"], ref["predictions"], shallow=False)


# ---------------------------------------------------------------- launchers

@pytest.mark.parametrize("env,expected", [
    ({}, (0, 1, None, "single")),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, (3, 8, 1, "torchrun")),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "2"}, (5, 6, 2, "slurm")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "1"}, (0, 1, None, "slurm")),
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1"},
     (1, 2, 1, "openmpi")),
    ({"PMI_RANK": "2", "PMI_SIZE": "4"}, (2, 4, None, "mpich")),
    # torchrun inside a SLURM allocation: torchrun's variables win
    ({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, (1, 2, None, "torchrun")),
])
def test_detect_shard(env, expected):
    assert tuple(detect_shard(environ=env)) == expected


def test_explicit_shard_and_bad_values():
    assert tuple(detect_shard("1/4", environ={"RANK": "0", "WORLD_SIZE": "2"}))[:3] == (1, 4, None)
    assert parse_shard((2, 3)) == (2, 3)
    for bad in ("4/4", "1", "a/b", (1,), "-1/2"):
        with pytest.raises(ShardError):
            parse_shard(bad)
    with pytest.raises(ShardError):
        detect_shard(environ={"RANK": "2", "WORLD_SIZE": "2"})


def test_partition_keeps_pictures_together():
    keys = ["a", "b", "c", "d", "a", "b", "c", "d", None, "e"]
    parts = partition(keys, 3)
    for k in "abcd":
        assert len({p for p, kk in zip(parts, keys) if kk == k}) == 1
    assert sorted(set(parts)) == [0, 1, 2]
    assert partition(list("abcdef"), 2) == [0, 0, 0, 1, 1, 1]
    assert partition(["x"] * 5, 4) == [0] * 5
    assert partition([], 3) == []


def test_resolve_device():
    assert resolve_device("cuda", 3, {}) == "cuda:3"
    assert resolve_device("cuda", 3, {"CUDA_VISIBLE_DEVICES": "5"}) == "cuda:0"
    assert resolve_device("cuda", None, {}) == "cuda"
    assert resolve_device("cuda:1", 3, {}) == "cuda:1"
    assert resolve_device("cpu", 3, {}) == "cpu"


# ---------------------------------------------------------------- command line

def test_cli_scores_a_predictions_file(tmp_path, capsys):
    data = _mmbench(tmp_path)
    res = ev.run(FakeModel(name="fake"), data, work_dir=str(tmp_path / "wd"), progress=False,
                 prompt_style="vlmevalkit")
    out = tmp_path / "rescored"
    assert ev.main(["--data", data, "--predictions", res["predictions"], "--work-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "MMBench_DEV_EN" in text and "0.833333" in text
    assert filecmp.cmp(out / "fake_MMBench_DEV_EN_acc.csv",
                       tmp_path / "wd" / "fake" / "fake_MMBench_DEV_EN_acc.csv", shallow=False)
    assert ev.main(["--predictions", res["predictions"]]) == 1
    assert "error" in capsys.readouterr().err


def test_cli_run_and_merge(tmp_path, monkeypatch, capsys):
    data = _mmbench(tmp_path)
    loaded = []

    def fake_load(path, clip_dir=None, device="cpu", dtype=None):
        loaded.append((path, clip_dir, device, dtype))
        return FakeModel()

    monkeypatch.setattr(tgllava, "load", fake_load, raising=False)
    parser = argparse.ArgumentParser(prog="tgllava")
    sub = parser.add_subparsers()
    ev.add_subparser(sub)
    wd = str(tmp_path / "wd")
    common = ["--model", str(tmp_path / "ckpt"), "--data", data, "--work-dir", wd, "--no-progress",
              "--prompt-style", "vlmevalkit"]
    for i in range(2):
        args = parser.parse_args(["eval"] + common + ["--shard", f"{i}/2", "--device", "cuda"])
        monkeypatch.setenv("LOCAL_RANK", str(i))
        assert args.func(args) == 0
    assert [x[2] for x in loaded] == ["cuda:0", "cuda:1"]
    text = capsys.readouterr().out
    assert "shard 0/2 done" in text and "0.833333" in text
    os.unlink(os.path.join(wd, "ckpt", "ckpt_MMBench_DEV_EN.xlsx"))
    args = parser.parse_args(["eval", "--merge", "--model-name", "ckpt", "--data", data, "--work-dir", wd])
    assert args.func(args) == 0
    assert os.path.exists(os.path.join(wd, "ckpt", "ckpt_MMBench_DEV_EN.xlsx"))


# ---------------------------------------------------------------- the real model

def _write_tokenizers(ckpt):
    """The golden sets carry no tokenizer files: write small character-level ones.

    LLM: a `tokenizers` BPE without merges over printable ASCII (ids 3..96,
    with <unk> <s> </s> = 0 1 2), BOS added.  CLIP: the byte alphabet and its
    word-final forms (0..511) without merges, <|startoftext|> 512 and
    <|endoftext|> 513, so EOS is the largest id as CLIP's pooling expects.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tgllava.tokenize import bytes_to_unicode

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + [chr(c) for c in range(33, 127)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(ckpt / "llm" / "tokenizer.json"))
    with open(ckpt / "llm" / "tokenizer_config.json", "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>"}, f)
    chars = list(bytes_to_unicode().values())
    clip = {c: i for i, c in enumerate(chars)}
    clip.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    clip.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    with open(ckpt / "clip" / "vocab.json", "w") as f:
        json.dump(clip, f)
    (ckpt / "clip" / "merges.txt").write_text("#version: 0.2\n")


@pytest.mark.slow
def test_eval_end_to_end_golden(tmp_path):
    """A run of the golden tiny TG-LLaVA checkpoint through tgllava.load and the eval adapter.

    Batch 4 and batch 1 must write the same predictions; the model is the
    real one, with tokenizers written by the test.
    """
    import subprocess

    from golden_util import GOLDEN as golden
    ckpt = tmp_path / "ckpt"
    subprocess.run([sys.executable, os.path.join(golden, "materialize.py"), os.path.join(golden, "tg-vicuna-tiny"),
                    str(ckpt)], check=True, capture_output=True)
    _write_tokenizers(ckpt)
    model = tgllava.load(str(ckpt / "llm"), clip_dir=str(ckpt / "clip"))
    data = _mmbench(tmp_path)
    try:
        res = ev.run(model, data, work_dir=str(tmp_path / "wd"), batch_size=4, limit=8, progress=False,
                     max_new_tokens=4)
    except TypeError as e:
        pytest.fail(f"Model.chat_batch must take the item dicts of tgllava/eval/protocol.py: {e}")
    assert res["kind"] == "MCQ" and os.path.exists(res["predictions"])
    res1 = ev.run(model, data, work_dir=str(tmp_path / "wd1"), batch_size=1, limit=8, progress=False,
                  max_new_tokens=4)
    assert filecmp.cmp(res["predictions"], res1["predictions"], shallow=False)
    assert res["scores"] == res1["scores"]
    # the header identifies the real model (issue 21): a rerun resumes to nothing, another dtype is refused
    header = json.loads(open(checkpoint_path(str(tmp_path / "wd"), "llm", "MMBench_DEV_EN")).readline())
    settings = header["settings"]
    assert settings["dtype"] == "float32" and settings["n_latents"] == model.sizes["p_latents"]
    assert settings["model"]["llm_dir"] == os.path.realpath(ckpt / "llm")
    assert {"config.json", "tokenizer.json"} <= set(settings["model"]["llm_files"])
    assert settings["model"]["clip_dir"] == os.path.realpath(ckpt / "clip")
    again = ev.run(model, data, work_dir=str(tmp_path / "wd"), batch_size=4, limit=8, progress=False,
                   max_new_tokens=4)
    assert again["scores"] == res["scores"]
    half = tgllava.load(str(ckpt / "llm"), clip_dir=str(ckpt / "clip"), dtype="bfloat16")
    with pytest.raises(ShardError, match="written with dtype = 'float32', but this run has dtype = 'bfloat16'"):
        ev.run(half, data, work_dir=str(tmp_path / "wd"), batch_size=4, limit=8, progress=False, max_new_tokens=4)


class StreamingFake(FakeModel):
    """A fake with the continuous interface: holds up to max_batch items and answers the one with the
    shortest question first (as continuous batching ends short answers first); can crash after k answers."""

    def __init__(self, crash_after=None, **kw):
        super().__init__(**kw)
        self.crash_after = crash_after
        self.streams = []     # (max_batch, kwargs) of each answer_stream call
        self.read_at_first = None

    def answer_stream(self, keyed_items, max_batch, **kw):
        self.streams.append((max_batch, kw))
        running, read, given = [], 0, 0
        source = iter(keyed_items)
        while True:
            while len(running) < max_batch:
                nxt = next(source, None)
                if nxt is None:
                    break
                read += 1
                self.calls.append([nxt[1]])
                running.append(nxt)
            if not running:
                return
            running.sort(key=lambda kv: len(kv[1]["prompt"]))
            key, item = running.pop(0)
            if self.read_at_first is None:
                self.read_at_first = read
            if self.crash_after is not None and given >= self.crash_after:
                raise RuntimeError("simulated crash")
            given += 1
            yield key, self.answer(item)


def test_a_model_with_answer_stream_runs_continuously(tmp_path):
    data = _mmbench(tmp_path)
    ref = ev.run(FakeModel(name="fake"), data, work_dir=str(tmp_path / "ref"), batch_size=4, progress=False,
                 prompt_style="vlmevalkit")
    model = StreamingFake(name="fake")
    res = ev.run(model, data, work_dir=str(tmp_path / "wd"), batch_size=4, progress=False, prompt_style="vlmevalkit")
    assert filecmp.cmp(ref["predictions"], res["predictions"], shallow=False) and res["scores"] == ref["scores"]
    # one stream for the whole run, 4 answers generated together, rows read as slots freed
    assert len(model.streams) == 1 and model.streams[0][0] == 4
    assert model.streams[0][1] == {"max_new_tokens": 128, "temperature": 0.0, "use_fom": True, "use_dp": True}
    assert model.read_at_first == 4 and len(model.items) == 16
    # every answer was checkpointed once, in the order the answers ended (not the order the rows were read)
    def written(wd):
        lines = open(checkpoint_path(str(wd), "fake", "MMBench_DEV_EN", 0, 1)).read().splitlines()
        return [json.loads(x)["index"] for x in lines[1:]]

    in_row_order, as_ended = written(tmp_path / "ref"), written(tmp_path / "wd")
    assert sorted(as_ended) == sorted(in_row_order) and len(set(as_ended)) == 16 and as_ended != in_row_order


def test_a_killed_continuous_run_resumes(tmp_path):
    data = _mmbench(tmp_path)
    ref = ev.run(FakeModel(name="fake"), data, work_dir=str(tmp_path / "ref"), batch_size=3, progress=False,
                 prompt_style="vlmevalkit")
    wd = str(tmp_path / "wd")
    with pytest.raises(RuntimeError, match="simulated crash"):
        ev.run(StreamingFake(crash_after=7, name="fake"), data, work_dir=wd, batch_size=3, progress=False,
               prompt_style="vlmevalkit")
    path = checkpoint_path(wd, "fake", "MMBench_DEV_EN", 0, 1)
    kept = [json.loads(x) for x in open(path).read().splitlines()[1:]]
    assert len(kept) == 6  # two full checkpoint batches of 3; the 7th answer was not yet flushed
    again = StreamingFake(name="fake")
    res = ev.run(again, data, work_dir=wd, batch_size=3, progress=False, prompt_style="vlmevalkit")
    assert len(again.items) == 16 - 6
    assert filecmp.cmp(ref["predictions"], res["predictions"], shallow=False)


@pytest.mark.parametrize("name", ["MMBench_TEST_EN", "POPE_test", "TextVQA_TEST"])
def test_a_dataset_without_answers_is_inference_only(tmp_path, capsys, name):
    """A test split without an `answer` column gets predictions and no score (VLMEvalKit's inference only)."""
    rows = [dict(index=i, image=IMGS[i], question=f"Q{i} [say: {'AB'[i % 2]}]", A="a", B="b", category="c")
            for i in range(4)]
    data = write_tsv(str(tmp_path / f"{name}.tsv"), rows)
    wd = tmp_path / "wd"
    res = ev.run(FakeModel(name="fake"), data, work_dir=str(wd), progress=False, prompt_style="vlmevalkit")
    note = f"{name} has no answer column: inference only (as in VLMEvalKit), predictions written but not scored"
    assert res["headline"] == {} and res["scores"] == {} and res["files"] == [] and res["note"] == note
    assert _files(wd / "fake") == [f"fake_{name}.xlsx"]
    columns, rows = read_table(res["predictions"])
    assert columns[-1] == "prediction" and [r["prediction"] for r in rows] == ["A", "B", "A", "B"]
    # scoring the file by hand says the same, and the command line prints it
    assert ev.score(data, res["predictions"])["note"] == note
    assert ev.main(["--data", data, "--predictions", res["predictions"]]) == 0
    out = capsys.readouterr().out
    assert f"note: {note}" in out and "0.00" not in out
