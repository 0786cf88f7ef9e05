"""`python -m tgllava` is the `tgllava` command (issue 23 item 8): the same help, version, output and
exit statuses, run as a user would in a fresh process."""

import subprocess
import sys
import tempfile

from _frontend_golden import subprocess_env

import tgllava
from tgllava.fixtures import build


def python_m(*argv):
    return subprocess.run([sys.executable, "-m", "tgllava", *argv], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300, cwd=tempfile.gettempdir())


def test_help_and_version():
    r = python_m("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: tgllava ") and "exit status:" in r.stdout
    r = python_m("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"tgllava {tgllava.__version__}"


def test_commands_run_and_fail_as_tgllava_does(tmp_path):
    llm, _, _ = build(str(tmp_path / "demo"))
    r = python_m("info", llm)
    assert r.returncode == 0 and r.stdout.startswith(f"{llm}: TG-LLaVA") and r.stderr == ""
    r = python_m("info", str(tmp_path / "demo"))
    assert r.returncode == 1 and r.stderr.startswith("tgllava info: error: ") and "did you mean" in r.stderr
    r = python_m()
    assert r.returncode == 1 and "usage: tgllava" in r.stderr
