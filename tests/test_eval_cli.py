"""`tgllava eval` as a user meets it: its --help, and exit statuses as `tgllava --help` promises them."""

import argparse

import pytest
from eval_testing import png_b64, write_tsv

import tgllava.eval as ev
from tgllava import cli


def _help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


def test_eval_help_is_for_users(capsys):
    text = _help(capsys, ["eval", "--help"])
    assert "registers" not in text and "run_cli" not in text  # no developer notes
    assert "examples:\n  tgllava eval --model LLM_DIR" in text
    assert "xlsx" in text and "exit status: 0 when every row was answered; 1 on an error" in text
    parser = ev.add_subparser(argparse.ArgumentParser().add_subparsers())
    undocumented = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
    assert undocumented == []
    for option in ("--prompt-style", "--max-new-tokens", "--no-progress", "--pred-format"):
        assert option in text
    # python -m tgllava.eval is the same command
    with pytest.raises(SystemExit):
        ev.main(["--help"])
    assert capsys.readouterr().out == text


def test_eval_exit_status_is_the_documented_one(tmp_path, capsys):
    assert "exit status 1" in _help(capsys, ["--help"])  # what tgllava --help promises for every failure
    data = write_tsv(str(tmp_path / "MME.tsv"), [dict(index=0, image=png_b64(), question="Q?", answer="Yes")])
    missing = str(tmp_path / "missing.tsv")
    assert cli.main(["eval", "--data", data, "--predictions", missing]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("tgllava eval: error: ") and "missing.tsv" in err[0]
    assert ev.main(["--data", data, "--predictions", missing]) == 1
    # usage errors too
    with pytest.raises(SystemExit) as e:
        ev.main(["--data", data, "--prompt-style", "nonsense"])
    assert e.value.code == 1
    # --debug shows the traceback: the exception goes up instead of the one line
    with pytest.raises(ev.DatasetError, match="missing.tsv"):
        cli.main(["eval", "--data", data, "--predictions", missing, "--debug"])
