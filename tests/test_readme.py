"""The README's Python examples run as written (issue 23 item 1).

Every ```python block of README.md is executed, top to bottom in one namespace (a block uses
the names the ones before it bound, like `m`), in a working folder laid out as the README says:
`path/to/llm` and `path/to/clip` hold the demo checkpoint (what `tgllava demo --keep path/to`
writes, tgllava.fixtures.build) and `photo.jpg`, `a.jpg`, `b.jpg` are the demo picture.  The one
block that talks to `tgllava serve` finds the loaded model served there (tgllava.serve.ServerThread
with the README's API key; its URL replaces the README's http://127.0.0.1:8000).  Python outside a
```python block (an indented snippet) would escape this test, so the README may hold none.
"""

import os
import re

import pytest

import tgllava
from tgllava import fixtures

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
README_URL = "http://127.0.0.1:8000"
README_KEY = "KEY"


def python_blocks(text):
    """(first line number, code) of every ```python block of a Markdown text."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in re.finditer(r"^```python\n(.*?)^```", text,
                                                                                  re.S | re.M)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    fixtures.build(str(folder / "path" / "to"))
    picture = fixtures.demo_image()
    for name in ("photo.jpg", "a.jpg", "b.jpg"):
        picture.save(folder / name)
    return folder


def test_readme_python_blocks_run(workdir, monkeypatch, capsys):
    with open(README, encoding="utf-8") as f:
        text = f.read()
    blocks = python_blocks(text)
    assert len(blocks) >= 4, "README.md lost its Python examples"
    monkeypatch.chdir(workdir)
    namespace, server = {}, None
    try:
        for line, code in blocks:
            if README_URL in code:
                pytest.importorskip("openai", reason="the README's serve example speaks with the openai client")
                from tgllava.serve import ServerThread

                server = ServerThread(namespace["m"], api_key=README_KEY)
                code = code.replace(README_URL, server.url)
            exec(compile("\n" * (line - 1) + code, README, "exec"), namespace)  # tracebacks show README's lines
    finally:
        if server is not None:
            server.stop()
    out = capsys.readouterr().out
    assert isinstance(namespace["m"], tgllava.Model) and isinstance(namespace["ans"], tgllava.Answer)
    assert "max_new_tokens must be an integer, got 'ten'" in out and "missing.jpg" in out
    assert namespace["reply"].choices[0].message.content in out


def test_readme_has_no_python_outside_python_blocks():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    rest = re.sub(r"^```python\n.*?^```", "", text, flags=re.S | re.M)
    stray = [ln for ln in rest.splitlines() if re.match(r"\s*(import \w|from \w[\w.]* import |\w+ = \w)", ln)]
    assert not stray, f"Python outside ```python blocks is not run by the tests: {stray}"
