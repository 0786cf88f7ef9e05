"""Next steps shown (issue 23 item 6): `demo --keep DIR` ends with the commands to try on the kept
checkpoint (and they run as printed); a folder holding a checkpoint one level down (DIR/llm) is
pointed at; a CLIP folder given as the model says to pass it as the CLIP folder, in Python terms from
Python and in option terms from the command line (viz's too); `info --dtype` sizes use the unit
their size calls for."""

import json
import os
import shlex
import shutil

import pytest

import tgllava
from tgllava import cli, info
from tgllava.errors import CheckpointError
from tgllava.fixtures import build


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("next") / "demo")
    build(folder)
    return folder


def run_main(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_demo_keep_prints_the_commands_to_try_and_they_run(capsys, tmp_path):
    keep, question = str(tmp_path / "kept demo"), "What's red?"  # the printed lines must quote them
    rc, out, _ = run_main(capsys, "demo", "--keep", keep, "--max-new-tokens", "3", "--question", question)
    assert rc == 0
    steps = out.split("try next:\n", 1)[1].splitlines()
    llm, clip, image = (os.path.join(keep, p) for p in ("llm", "clip", "image.png"))
    assert steps[0] == (f"  tgllava generate --model {shlex.quote(llm)} --clip {shlex.quote(clip)} "
                        f"--image {shlex.quote(image)} --question {shlex.quote(question)}")
    generate, info_line = shlex.split(steps[0]), shlex.split(steps[1])
    rc, answer, err = run_main(capsys, *generate[1:], "--max-new-tokens", "3")
    assert rc == 0 and answer.strip(), err
    rc, described, err = run_main(capsys, *info_line[1:])
    assert rc == 0 and "load check: passed" in described, err
    assert shlex.split(steps[2])[:4] == ["tgllava", "serve", "--model", llm]


def test_demo_without_keep_prints_no_next_steps(capsys):
    rc, out, _ = run_main(capsys, "demo", "--max-new-tokens", "2")
    assert rc == 0 and "try next" not in out


def test_parent_folder_points_at_its_llm_folder(capsys, demo_dir):
    llm = os.path.join(demo_dir, "llm")
    rc, _, err = run_main(capsys, "info", demo_dir)
    assert rc == 1 and err.count("\n") == 1
    assert f"did you mean {llm}?" in err and "file not found" not in err
    rc, _, err = run_main(capsys, "generate", "--model", demo_dir, "--image", os.path.join(demo_dir, "image.png"),
                          "--question", "q")
    assert rc == 1 and f"did you mean {llm}?" in err
    with pytest.raises(CheckpointError, match="did you mean"):
        tgllava.load(demo_dir)


def test_folder_without_checkpoint_inside_gets_no_guess(capsys, tmp_path):
    (tmp_path / "notes").mkdir()
    rc, _, err = run_main(capsys, "info", str(tmp_path))
    assert rc == 1 and "no config.json (not a checkpoint folder)" in err and "did you mean" not in err


def test_clip_folder_as_model_says_pass_it_as_clip(capsys, demo_dir):
    clip = os.path.join(demo_dir, "clip")
    with pytest.raises(CheckpointError, match=r"this is a CLIP folder .*pass it as clip_dir=\.\.\."):
        tgllava.load(clip)
    rc, _, err = run_main(capsys, "generate", "--model", clip, "--image", os.path.join(demo_dir, "image.png"),
                          "--question", "q")
    assert rc == 1 and "this is a CLIP folder" in err and "pass it as --clip DIR" in err
    assert "clip_dir" not in err and "llava-hf" not in err
    rc, out, _ = run_main(capsys, "info", clip)  # info describes a CLIP folder
    assert rc == 0 and out.splitlines()[0].endswith(": CLIP")


def test_viz_speaks_in_options(capsys, demo_dir, tmp_path, monkeypatch):
    """A tower that cannot be found: the advice names --clip, not load()'s clip_dir."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    llm = tmp_path / "llm"
    shutil.copytree(os.path.join(demo_dir, "llm"), llm)
    config = json.loads((llm / "config.json").read_text())
    config["mm_vision_tower"] = config["mm_text_tower"] = "someone/missing-clip"
    (llm / "config.json").write_text(json.dumps(config))
    rc, _, err = run_main(capsys, "viz", "--model", str(llm), "--image", os.path.join(demo_dir, "image.png"),
                          "--question", "q", "--out", str(tmp_path / "fig.png"))
    assert rc == 1 and "--clip DIR" in err and "clip_dir" not in err, err


def test_storage_sizes_use_a_fitting_unit(capsys, demo_dir):
    rc, out, _ = run_main(capsys, "info", os.path.join(demo_dir, "llm"), "--dtype", "int4")
    line = next(line for line in out.splitlines() if line.startswith("  stored as int4"))
    assert "0.00 GB" not in line and " MB" in line and " KB" in line, line
    assert [info._fmt_bytes(n) for n in (512, 2_500, 3_400_000, 7_100_000_000)] == \
        ["512 B", "2.50 KB", "3.40 MB", "7.10 GB"]


def test_siglip_folder_as_model_says_pass_it_as_the_tower(capsys, tmp_path):
    _, tower, image = build(str(tmp_path), tower="siglip")
    with pytest.raises(CheckpointError, match=r"this is a SigLIP folder .*pass it as clip_dir=\.\.\."):
        tgllava.load(tower)
    rc, out, _ = run_main(capsys, "info", tower)  # info describes it as a tower folder
    assert rc == 0 and "SigLIP" in out


def test_eval_speaks_in_options(capsys, demo_dir, tmp_path):
    data = tmp_path / "d.tsv"
    data.write_text("index\tquestion\tanswer\n1\tIs it red?\tYes\n", encoding="utf-8")
    rc, _, err = run_main(capsys, "eval", "--model", os.path.join(demo_dir, "clip"), "--data", str(data),
                          "--work-dir", str(tmp_path / "w"), "--no-progress")
    assert rc == 1 and "pass it as --clip DIR" in err and "clip_dir" not in err
