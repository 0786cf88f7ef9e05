"""`tgllava --help` and each command's --help (issue 23 item 4): every option of every command but eval
(tested in test_eval_cli.py) says what it does, each command ends with example lines that the parser
accepts as they are written, and `tgllava --help` lists the commands with a line each and the exit
statuses, which main() keeps: 0, 1 (errors and bad arguments) and 130 (Ctrl-C)."""

import argparse
import shlex

import pytest

from tgllava import cli

COMMANDS = ("generate", "info", "demo", "viz", "serve")


def subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def help_text(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help(command):
    _, commands = subparsers()
    for action in commands[command]._actions:
        text = action.help
        assert text and text != argparse.SUPPRESS and len(text) > 10, (command, action.option_strings or action.dest)


@pytest.mark.parametrize("command", COMMANDS)
def test_examples_parse_as_written(capsys, command):
    text = help_text(capsys, command)
    assert text.startswith(f"usage: tgllava {command}")
    examples = text.split("\nexamples:\n", 1)[1].splitlines()
    assert examples and all(line.startswith(f"  tgllava {command}") for line in examples), examples
    parser, _ = subparsers()
    for line in examples:
        argv = shlex.split(line.split("   (")[0])[1:]  # without a trailing "(comment)"
        args = parser.parse_args(argv)
        assert args.command == command and callable(args.func)


def test_top_level_help_lists_commands_and_exit_statuses(capsys):
    text = help_text(capsys)
    _, commands = subparsers()
    for name in (*COMMANDS, "eval"):
        line = next(line for line in text.splitlines() if line.startswith(f"    {name} "))
        assert len(line.split(None, 1)[1]) > 15, line  # a one-line description
    statuses = text.split("\nexit status:\n", 1)[1]
    for code in ("0", "1", "130"):
        assert f"  {code} " in statuses
    assert "Ctrl-C" in statuses and "eval" in statuses


def test_exit_statuses_are_those_promised(capsys, monkeypatch, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--model"])  # bad arguments
    assert e.value.code == 1
    assert cli.main([]) == 1  # no command
    assert cli.main(["info", str(tmp_path / "missing")]) == 1  # an error
    assert cli.main(["eval", "--data", str(tmp_path / "missing.tsv"), "--model", str(tmp_path)]) == 1

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run_info", interrupted)
    assert cli.main(["info", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err


def test_demo_options_say_what_they_do(capsys):
    text = help_text(capsys, "demo")
    assert "the question about the demo picture" in text and "answer length limit" in text
