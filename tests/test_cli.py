"""Tests of the `tgllava` command line: generate on golden checkpoints (its answer equals
chat()'s), info (configs and headers only, tower paths through a fake Hugging Face
cache), demo, --help, and errors (one line on stderr, exit status 1; --debug raises).

Most commands run in-process through tgllava.cli.main; `demo` and one error
case also run as `python -m tgllava.cli` subprocesses, as a user would.
"""

import json
import os
import subprocess
import tempfile
import sys

import pytest
from _frontend_golden import QUESTION, cached_chat, golden_set, subprocess_env

from tgllava import cli

L15, TGV = "llava15-tiny", "tg-vicuna-tiny"


def run_main(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def run_subprocess(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "tgllava.cli", *argv], capture_output=True, text=True,
                          env=subprocess_env(), timeout=timeout, cwd=tempfile.gettempdir())


# --- help -------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["info", "--help"], ["demo", "--help"]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tgllava")
    if argv == ["generate", "--help"]:
        for opt in ("--model", "--clip", "--image", "--question", "--device", "--dtype", "--max-new-tokens",
                    "--temperature", "--top-p", "--conv-mode", "--no-fom", "--no-dp", "--stream"):
            assert opt in out


def test_eval_and_viz_subcommands_registered(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in ("generate", "info", "demo", "eval", "viz"):
        assert f"    {name}" in out
    for name, opts in (("eval", ("--model", "--data", "--predictions", "--batch-size", "--shard", "--debug")),
                       ("viz", ("--model", "--image", "--question", "--out", "--compare-baseline", "--debug"))):
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: tgllava {name}")
        for opt in opts:
            assert opt in out, (name, opt)


def test_no_command_prints_help(capsys):
    rc, out, err = run_main(capsys)
    assert rc == 1 and "usage: tgllava" in err


# --- generate ----------------------------------------------------------------------

def test_generate_llava15_equals_chat(capsys):
    llm, clip, img = golden_set(L15)
    rc, out, err = run_main(capsys, "generate", "--model", llm, "--clip", clip, "--image", img,
                            "--question", QUESTION, "--max-new-tokens", "8", "--timings")
    assert rc == 0
    want = cached_chat(L15, img, max_new_tokens=8)
    assert out == want.text + "\n"
    assert err.startswith("timings: preprocess") and err.count("\n") == 1


@pytest.mark.slow
def test_generate_tg_equals_chat(capsys):
    # DP off keeps this cheap on a small CPU (the full FOM+DP path is covered by test_frontend_e2e)
    llm, clip, img = golden_set(TGV)
    rc, out, err = run_main(capsys, "generate", "--model", llm, "--clip", clip, "--image", img,
                            "--question", QUESTION, "--max-new-tokens", "8", "--no-dp")
    assert rc == 0 and err == ""
    assert out == cached_chat(TGV, img, max_new_tokens=8, use_dp=False).text + "\n"


@pytest.mark.slow
def test_generate_stream_and_ablation_flags(capsys):
    llm, clip, img = golden_set(TGV)
    rc, out, err = run_main(capsys, "generate", "--model", llm, "--clip", clip, "--image", img,
                            "--question", QUESTION, "--max-new-tokens", "8", "--no-fom", "--no-dp", "--stream",
                            "--conv-mode", "vicuna_v1")
    assert rc == 0
    want = cached_chat(TGV, img, max_new_tokens=8, use_fom=False, use_dp=False, conv_mode="vicuna_v1")
    assert want.conv_mode == "vicuna_v1"
    assert out == want.text + "\n"


# --- info --------------------------------------------------------------------------

def offline_hub(monkeypatch, cache):
    """huggingface_hub offline over the cache folder `cache` (it reads its environment once, at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.slow
def test_info_tg_checkpoint_with_tower_in_hf_cache(capsys, tmp_path, monkeypatch):
    llm, clip, _ = golden_set(TGV)
    repo = tmp_path / "hub" / "models--openai--clip-vit-large-patch14-336"
    snap = repo / "snapshots" / "abc123"
    snap.parent.mkdir(parents=True)
    os.symlink(clip, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    offline_hub(monkeypatch, tmp_path / "hub")
    rc, out, err = run_main(capsys, "info", llm)
    assert rc == 0 and err == ""
    assert f"{llm}: TG-LLaVA" in out
    assert "FOM yes (2 Q-former layers, 576 queries)" in out
    assert "DP yes (2 perceiver layers, 64 latents, 2304 positions)" in out
    assert "hidden 256, 2 layers, 4 heads (4 kv)" in out
    assert "chat template: llava_v0" in out
    assert f"vision tower: openai/clip-vit-large-patch14-336 -> {snap}" in out
    assert f"text tower: openai/clip-vit-large-patch14-336 -> {snap}" in out
    assert "tg-fom" in out and "tg-dp" in out and "projector" in out

    rc, out, _ = run_main(capsys, "info", llm, "--json")
    info = json.loads(out)
    assert info["kind"] == "TG-LLaVA" and info["tg"]["fom"] and info["tg"]["dp"]
    assert info["params"]["projector"] == 256 * 1024 + 256 + 256 * 256 + 256
    assert info["params"]["tg-dp"] > 0 and info["towers"]["vision"]["params"] > 0


def test_info_plain_llava_and_clip(capsys, monkeypatch, tmp_path):
    offline_hub(monkeypatch, tmp_path / "empty-hub")
    llm, clip, _ = golden_set(L15)
    rc, out, _ = run_main(capsys, "info", llm)
    assert rc == 0
    assert f"{llm}: LLaVA-1.5" in out and "FOM no; DP no" in out and "chat template: vicuna_v1" in out
    assert "load check: FAILED" in out and "cannot find the CLIP tower" in out and "--clip DIR" in out
    assert "text tower" not in out
    rc, out, _ = run_main(capsys, "info", clip)
    assert rc == 0 and f"{clip}: CLIP" in out and "vision: width 1024, 3 layers, image 336, patch 14" in out


def test_info_reads_no_weights(capsys, monkeypatch):
    """info never touches tensor bytes: reading them would raise here."""
    from tgllava import checkpoint, torchbin

    def refuse(*a, **k):
        raise AssertionError("info read tensor data")

    monkeypatch.setattr(checkpoint.TensorRef, "raw", refuse)
    monkeypatch.setattr(torchbin, "load_bin", refuse)
    for name in (TGV, L15):
        llm, clip, _ = golden_set(name)
        for folder in (llm, clip):
            rc, out, err = run_main(capsys, "info", folder)
            assert rc == 0, err


def test_info_on_bin_checkpoint(capsys, tmp_path):
    """A folder with PyTorch .bin weights is described from the pickled metadata."""
    import shutil

    from _frontend_golden import FIXTURES
    folder = tmp_path / "bin"
    shutil.copytree(os.path.join(FIXTURES, "sharded"), folder)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlavaLlamaForCausalLM"],
                                                    "model_type": "llava_llama", "hidden_size": 6}))
    rc, out, err = run_main(capsys, "info", str(folder))
    assert rc == 0, err
    assert "pytorch_model-00001-of-00002.bin" in out and "7 tensors" in out


# --- demo --------------------------------------------------------------------------

def test_demo_subprocess():
    r = run_subprocess("demo", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert "RANDOM weights" in r.stdout
    assert "answer:" in r.stdout and "timings:" in r.stdout and "TG-LLaVA" in r.stdout
    assert r.stderr == ""


def test_demo_keep_and_stream(capsys, tmp_path):
    keep = tmp_path / "demo"
    rc, out, err = run_main(capsys, "demo", "--keep", str(keep), "--stream", "--max-new-tokens", "6")
    assert rc == 0 and "answer:" in out
    for f in ("llm/config.json", "llm/model.safetensors", "llm/tokenizer.json", "clip/vocab.json",
              "clip/merges.txt", "clip/model.safetensors", "image.png"):
        assert (keep / f).is_file(), f
    # the kept checkpoint works with the other commands
    rc, out, _ = run_main(capsys, "info", str(keep / "llm"))
    assert rc == 0 and "TG-LLaVA" in out and "FOM yes (2 Q-former layers, 64 queries)" in out
    assert f"-> {keep / 'clip'}" in out
    rc, out, _ = run_main(capsys, "generate", "--model", str(keep / "llm"), "--image", str(keep / "image.png"),
                          "--question", "What is in this image?", "--max-new-tokens", "6")
    assert rc == 0 and out.endswith("\n")


# --- errors ------------------------------------------------------------------------

def _one_line_error(rc, err):
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("tgllava"), err
    assert "Traceback" not in err


def test_missing_image(capsys):
    llm, clip, _ = golden_set(L15)
    rc, out, err = run_main(capsys, "generate", "--model", llm, "--clip", clip, "--image", "/no/such.png",
                            "--question", "q")
    _one_line_error(rc, err)
    assert "/no/such.png" in err and out == ""


def test_missing_model_folder_subprocess(tmp_path):
    img = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (8, 8)).save(img)
    r = run_subprocess("generate", "--model", str(tmp_path / "nope"), "--image", str(img), "--question", "q")
    _one_line_error(r.returncode, r.stderr)
    assert "--model" in r.stderr and "nope" in r.stderr
    r = run_subprocess("generate", "--model", str(tmp_path / "nope"), "--image", "missing.png", "--question", "q")
    _one_line_error(r.returncode, r.stderr)
    assert "--model" in r.stderr  # the model folder is checked first


def test_missing_clip_tower_names_the_option(capsys, tmp_path, monkeypatch):
    offline_hub(monkeypatch, tmp_path / "empty-hub")
    llm, _, img = golden_set(TGV)
    rc, _, err = run_main(capsys, "generate", "--model", llm, "--image", img, "--question", "q")
    _one_line_error(rc, err)
    assert "--clip DIR" in err


def test_missing_info_folder_and_bad_arguments(capsys):
    rc, _, err = run_main(capsys, "info", "/no/such/folder")
    _one_line_error(rc, err)
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--model", "x"])
    assert e.value.code == 1
    _one_line_error(1, capsys.readouterr().err)
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--model", "x", "--image", "y", "--question", "q", "--dtype", "float8"])
    assert e.value.code == 1


def test_bad_conv_mode_and_debug(capsys):
    llm, clip, img = golden_set(L15)
    argv = ["generate", "--model", llm, "--clip", clip, "--image", img, "--question", "q", "--conv-mode", "nope"]
    rc, _, err = run_main(capsys, *argv)
    _one_line_error(rc, err)
    assert "unknown conversation mode" in err
    with pytest.raises(ValueError):
        cli.main(argv + ["--debug"])
    with pytest.raises(ValueError):
        cli.main(["--debug"] + argv)


@pytest.mark.slow
def test_llava_hf_folder_through_cli(capsys, tmp_path):
    from test_frontend_e2e import _make_llava_hf

    folder = _make_llava_hf(str(tmp_path / "hf"))
    rc, out, _ = run_main(capsys, "info", folder)
    assert rc == 0 and "llava-hf LLaVA-1.5" in out and "(inside the folder)" in out
    img = golden_set(L15)[2]
    rc, out, _ = run_main(capsys, "generate", "--model", folder, "--image", img, "--question", QUESTION,
                          "--max-new-tokens", "8")
    assert rc == 0
    assert out == cached_chat(L15, img, max_new_tokens=8).text + "\n"
