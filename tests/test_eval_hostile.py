"""Evaluation under kills and careless launches (issue 13): a checkpoint whose header a kill tore,
a merge lock left by a killed shard, RANK without WORLD_SIZE, bad arguments caught before loading."""

import argparse
import filecmp
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from eval_testing import FakeModel, png_b64, without_openpyxl, write_tsv

import tgllava
import tgllava.eval as ev
from tgllava.eval.errors import ShardError
from tgllava.eval.runner import checkpoint_path
from tgllava.eval.shard import detect_shard

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tgllava.__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))  # eval_testing's folder


def _mmbench(tmp_path, n=6):
    rows = [dict(index=i, image=png_b64((i * 40 % 256, 100, 50)), question=f"Q{i} [say: {'ABCD'[i % 4]}]",
                 A="a", B="b", C="c", D="d", answer="ABCD"[i % 4], category="c", split="dev") for i in range(n)]
    return write_tsv(str(tmp_path / "MMBench_DEV_EN.tsv"), rows)


TORN_CHILD = """
import os, signal, sys
sys.path[:0] = [{root!r}, {tests!r}]
import tgllava.eval as ev
from tgllava.eval import runner
from eval_testing import FakeModel

def torn_write(self, records):  # the first write (the header) is cut in the middle by a kill
    text = "".join(runner.json.dumps(r) + "\\n" for r in records)
    self._f.write(text[: len(text) // 2])
    self._f.flush()
    os.fsync(self._f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

runner.Checkpoint._write = torn_write
ev.run(FakeModel(name="fake"), {data!r}, work_dir={wd!r}, batch_size=2, progress=False, prompt_style="vlmevalkit")
"""


def test_run_killed_during_its_first_write_recovers(tmp_path):
    data = _mmbench(tmp_path)
    wd = str(tmp_path / "wd")
    script = TORN_CHILD.format(root=PKG_ROOT, tests=TESTS, data=data, wd=wd)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    ckpt = checkpoint_path(wd, "fake", "MMBench_DEV_EN")
    torn = open(ckpt, "rb").read()
    assert torn and not torn.endswith(b"\n")  # a header torn by the kill
    for _ in range(2):  # the rerun and every later run work
        res = ev.run(FakeModel(name="fake"), data, work_dir=wd, batch_size=2, progress=False,
                     prompt_style="vlmevalkit")
    lines = open(ckpt, encoding="utf-8").read().splitlines()
    assert "tgllava_eval_checkpoint" in json.loads(lines[0])
    ref = ev.run(FakeModel(name="fake"), data, work_dir=str(tmp_path / "clean"), progress=False,
                 prompt_style="vlmevalkit")
    assert filecmp.cmp(res["predictions"], ref["predictions"], shallow=False)


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _run_shards_with_lock(tmp_path, lock_content, age=0.0):
    data = _mmbench(tmp_path)
    wd = str(tmp_path / "wd")
    r0 = ev.run(FakeModel(name="fake"), data, work_dir=wd, progress=False, prompt_style="vlmevalkit", shard="0/2")
    assert r0["merged"] is False
    lock = os.path.join(wd, "fake", "fake_MMBench_DEV_EN.merge.lock")
    with open(lock, "w") as f:  # what a shard killed while merging leaves behind
        f.write(lock_content)
    if age:
        os.utime(lock, (time.time() - age, time.time() - age))
    r1 = ev.run(FakeModel(name="fake"), data, work_dir=wd, progress=False, prompt_style="vlmevalkit", shard="1/2")
    return r1, lock


def test_stale_merge_lock_of_a_dead_shard_is_taken_over(tmp_path):
    r1, lock = _run_shards_with_lock(tmp_path, f"{_dead_pid()} {socket.gethostname()} {time.time():.0f}\n")
    assert r1.get("merged") is not False and "headline" in r1
    assert not os.path.exists(lock) and not [f for f in os.listdir(os.path.dirname(lock)) if ".stale." in f]


def test_old_empty_merge_lock_is_taken_over(tmp_path):
    r1, lock = _run_shards_with_lock(tmp_path, "", age=2 * ev.runner.STALE_LOCK_SECONDS)
    assert "headline" in r1 and not os.path.exists(lock)


def test_live_merge_lock_is_respected(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        r1, lock = _run_shards_with_lock(tmp_path, f"{sleeper.pid} {socket.gethostname()} {time.time():.0f}\n")
        assert r1["merged"] is False and os.path.exists(lock)
        # a fresh empty lock (owner unknown) is respected too
        (tmp_path / "b").mkdir()
        r1, lock = _run_shards_with_lock(tmp_path / "b", "")
        assert r1["merged"] is False
    finally:
        sleeper.kill()
        sleeper.wait()


def test_rank_without_world_size_is_refused():
    with pytest.raises(ShardError, match="RANK=1 is set but WORLD_SIZE is not"):
        detect_shard(environ={"RANK": "1"})
    with pytest.raises(ShardError, match="SLURM_PROCID"):
        detect_shard(environ={"SLURM_PROCID": "0"})
    assert tuple(detect_shard("0/1", environ={"RANK": "1"}))[:2] == (0, 1)  # an explicit shard wins


def _record_loads(monkeypatch):
    """tgllava.load replaced by a fake that records the paths it was asked for (the list returned)."""
    loaded = []

    def fake_load(path, **kw):
        loaded.append(path)
        return FakeModel()
    monkeypatch.setattr(tgllava, "load", fake_load, raising=False)
    return loaded


@pytest.mark.parametrize("extra,message", [
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--limit", "-1"], "--limit"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--data", "NoSuchBenchmark_XYZ"], "NoSuchBenchmark_XYZ"),
    (["--shard", "5/2"], "shard"),
])
def test_eval_cli_checks_arguments_before_loading_the_model(tmp_path, monkeypatch, capsys, extra, message):
    data = _mmbench(tmp_path)
    loaded = _record_loads(monkeypatch)
    monkeypatch.setenv("LMUData", str(tmp_path))
    parser = argparse.ArgumentParser(prog="tgllava")
    ev.add_subparser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--model", str(tmp_path / "ckpt"), "--data", data, "--work-dir",
                              str(tmp_path / "wd"), "--no-progress", "--prompt-style", "vlmevalkit"] + extra)
    assert args.func(args) == 1
    assert message in capsys.readouterr().err
    assert loaded == []


@pytest.mark.parametrize("how", ["option", "environment"])
def test_xlsx_without_openpyxl_fails_before_loading_the_model(tmp_path, monkeypatch, capsys, how):
    """issue 21 item 18: not after the whole inference."""
    data = _mmbench(tmp_path)
    loaded = _record_loads(monkeypatch)
    without_openpyxl(monkeypatch)
    extra = ["--pred-format", "xlsx"] if how == "option" else []
    if how == "environment":
        monkeypatch.setenv("PRED_FORMAT", "xlsx")
    parser = argparse.ArgumentParser(prog="tgllava")
    ev.add_subparser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--model", str(tmp_path / "ckpt"), "--data", data, "--work-dir",
                              str(tmp_path / "wd"), "--no-progress", "--prompt-style", "vlmevalkit"] + extra)
    assert args.func(args) == 1
    assert "pip install openpyxl" in capsys.readouterr().err
    assert loaded == []
    # the library call refuses before it asks the model anything, and so does a merge
    model = FakeModel(name="fake")
    with pytest.raises(ev.DatasetError, match="openpyxl"):
        ev.run(model, data, work_dir=str(tmp_path / "wd"), progress=False, prompt_style="vlmevalkit",
               pred_format="xlsx")
    assert model.items == []
    args = parser.parse_args(["eval", "--merge", "--model-name", "fake", "--data", data, "--work-dir",
                              str(tmp_path / "wd")] + extra)
    assert args.func(args) == 1
    assert "pip install openpyxl" in capsys.readouterr().err
