"""The installed extension links on its own: tgllava/_C*.so finds libscipy_openblas.so through
its run-time path (relative to itself, set by setup.py) and not through a path into pip's
temporary build environment, a preload by the package, LD_LIBRARY_PATH or LD_PRELOAD.

`ldd` must resolve every library of the extension, OpenBLAS to the scipy-openblas32 package
this interpreter has installed, and a fresh interpreter with a clean loader environment must
import the extension and use OpenBLAS from that same folder.  The package's plain dependencies
(what `tgllava demo`, `generate`, `eval` and `viz` import) must be importable too.
"""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

import tgllava


def _extension_path():
    return os.path.realpath(tgllava._C.__file__)


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    return env


def _openblas_dir():
    import scipy_openblas32

    return os.path.realpath(scipy_openblas32.get_lib_dir())


def test_ldd_resolves_every_library():
    if not sys.platform.startswith("linux"):
        pytest.fail("these checks are written for Linux (ldd, $ORIGIN run-time paths)")
    r = subprocess.run(["ldd", _extension_path()], capture_output=True, text=True, env=_clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "not found" not in r.stdout, r.stdout
    m = re.search(r"libscipy_openblas\.so\S* => (\S+)", r.stdout)
    assert m, f"the extension does not link libscipy_openblas:\n{r.stdout}"
    assert os.path.dirname(os.path.realpath(m.group(1))) == _openblas_dir(), r.stdout
    assert "pip-build-env" not in r.stdout


def test_extension_imports_in_a_fresh_interpreter():
    code = (
        "import tgllava, tgllava._C as C\n"
        "libs = {l.split()[-1] for l in open('/proc/self/maps') if l.rstrip().endswith('/libscipy_openblas.so')}\n"
        "print(C.__file__)\n"
        "print(sorted(libs))\n"
        "import numpy as np\n"
        "print(tgllava.tile(np.ones((3, 4, 4), np.float32)).shape)\n"
    )
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(tgllava.__file__)))
    env = _clean_env()
    env["PYTHONPATH"] = pkg_root
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                       cwd="/")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert os.path.realpath(lines[0]) == _extension_path()
    libs = eval(lines[1])  # noqa: S307 - our own print of a list of paths
    assert len(libs) == 1 and os.path.dirname(os.path.realpath(libs[0])) == _openblas_dir(), lines[1]
    assert lines[2] == "(4, 3, 4, 4)"


@pytest.mark.parametrize("dist,module", [("numpy", "numpy"), ("pillow", "PIL"), ("tqdm", "tqdm"),
                                         ("tokenizers", "tokenizers"), ("sentencepiece", "sentencepiece"),
                                         ("scipy-openblas32", "scipy_openblas32"),
                                         ("huggingface-hub", "huggingface_hub")])
def test_default_path_imports_are_plain_dependencies(dist, module):
    """The installed metadata requires them without an extra, and they import."""
    from importlib import metadata

    plain = set()
    for req in metadata.requires("tgllava") or []:
        if "extra ==" not in req:
            plain.add(re.split(r"[<>=!~ ;\[]", req, 1)[0].lower().replace("_", "-"))
    assert dist in plain, f"{dist} is not a plain dependency of the installed tgllava: {sorted(plain)}"
    assert importlib.util.find_spec(module) is not None
