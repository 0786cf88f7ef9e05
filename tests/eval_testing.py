"""Test helpers for the evaluation loop: a fake model and tiny datasets.

`FakeModel` implements the EvalModel protocol without any weights: it
answers each item from its prompt - by default the text inside the first
``[say: ...]`` of the prompt, else "I do not know" - records every call,
and can raise after a number of batches to stand in for a killed run.
`png_b64` makes a small solid-colour picture as base64 and `write_tsv`
writes rows (dicts) as a VLMEvalKit-style TSV; `without_openpyxl` makes
openpyxl unimportable for one test (pytest's monkeypatch).
"""

import base64
import csv
import io
import re

_SAY = re.compile(r"\[say: ([^\]]*)\]")


def say_answer(item):
    m = _SAY.search(item["prompt"])
    return m.group(1) if m else "I do not know"


class FakeModel:
    """A deterministic stand-in for a loaded model."""

    def __init__(self, answer=say_answer, fail_after=None, config=None, has_tg=True, name=None):
        self.answer = answer
        self.fail_after = fail_after
        self.config = config if config is not None else {"model_type": "llava_llama"}
        self.has_tg = has_tg
        if name is not None:
            self.name = name
        self.calls = []   # one list of items per chat_batch call
        self.kwargs = []  # the keyword arguments of each call

    @property
    def items(self):
        return [it for batch in self.calls for it in batch]

    def chat_batch(self, items, max_new_tokens=128, temperature=0.0, use_fom=True, use_dp=True):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        for it in items:
            assert it["prompt"].count("<image>") >= 1
        self.calls.append(list(items))
        self.kwargs.append(dict(max_new_tokens=max_new_tokens, temperature=temperature,
                                use_fom=use_fom, use_dp=use_dp))
        return [self.answer(it) for it in items]


def png_b64(color=(200, 30, 30), size=(8, 6)):
    """A small solid-colour PNG as base64 text."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_tsv(path, rows, columns=None):
    """Write rows as a TSV the way VLMEvalKit's files are (minimal quoting)."""
    if columns is None:
        columns = []
        for r in rows:
            for k in r:
                if k not in columns:
                    columns.append(k)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    return path


def without_openpyxl(monkeypatch):
    """Make `import openpyxl` raise ImportError until the test ends."""
    import builtins

    real_import = builtins.__import__

    def no_openpyxl(name, *args, **kwargs):
        if name == "openpyxl" or name.startswith("openpyxl."):
            raise ImportError("no openpyxl")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openpyxl)
