"""No pickles: models and tensors are safetensors, and nothing unpickles untrusted bytes.

A pickle executes code when loaded, so a shared artifacts folder full of
pickles is a shared code-execution channel. The source check parses every
module with ``ast`` (comments and docstrings that mention pickle are fine);
the artifacts check looks at what a real run left under PERSONA_PIPELINE_HOME.
"""

from __future__ import annotations

import ast
import json
import os
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCANNED = [REPO / "persona_pipeline", REPO / "bench"]

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "shelve", "marshal"}
JOBLIB_UNSAFE = {"dump", "load"}
PICKLE_HELPERS = {"read_pickle", "to_pickle"}  # pandas
FORBIDDEN_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".joblib", ".ckpt"}
THIRD_PARTY_CACHES = {"hf-cache", "huggingface", ".cache"}  # downloads, not artifacts we wrote


class _Checker(ast.NodeVisitor):
    def __init__(self, filename: str):
        self.filename = filename
        self.problems: list[str] = []
        self.modules: dict[str, str] = {}  # local name → module it is bound to (torch, joblib, pickle …)
        self.functions: dict[str, str] = {}  # local name → "torch.load" etc. for `from torch import load`

    def _flag(self, node: ast.AST, what: str) -> None:
        self.problems.append(f"{self.filename}:{getattr(node, 'lineno', '?')}: {what}")

    # imports -----------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            if root in PICKLE_MODULES:
                self._flag(node, f"import {alias.name}")
            self.modules[(alias.asname or alias.name).split(".")[0]] = root if not alias.asname else alias.name
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        root = module.split(".")[0]
        if root in PICKLE_MODULES:
            self._flag(node, f"from {module} import …")
        for alias in node.names:
            local = alias.asname or alias.name
            if root == "torch" and module == "torch" and alias.name in ("save", "load"):
                self.functions[local] = f"torch.{alias.name}"
            elif root == "joblib" and alias.name in JOBLIB_UNSAFE:
                self._flag(node, f"from joblib import {alias.name}")
            elif alias.name in PICKLE_MODULES:  # e.g. `from six.moves import cPickle`
                self._flag(node, f"from {module} import {alias.name}")
            self.modules.setdefault(local, f"{module}.{alias.name}")
        self.generic_visit(node)

    # uses --------------------------------------------------------------------
    def _dotted(self, node: ast.AST) -> str | None:
        """``a.b.c`` for a chain of attributes on a name, with the name's import resolved."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        head = self.functions.get(node.id) or self.modules.get(node.id, node.id)
        return ".".join([head, *reversed(parts)])

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = self._dotted(node)
        if dotted and dotted.split(".")[0] in PICKLE_MODULES:
            self._flag(node, f"use of {dotted}")
            return  # one finding per chain
        if node.attr in PICKLE_HELPERS:
            self._flag(node, f".{node.attr}()")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = self._dotted(node.func)
        if name in ("torch.save", "torch.serialization.save"):
            self._flag(node, "torch.save() pickles: write safetensors (save_file / save_pretrained)")
        elif name in ("torch.load", "torch.serialization.load") and not _weights_only_true(node):
            self._flag(node, "torch.load() without weights_only=True")
        elif name and name.split(".")[0] == "joblib" and name.split(".")[-1] in JOBLIB_UNSAFE:
            self._flag(node, f"{name}() pickles")
        for kw in node.keywords:
            if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                self._flag(node, "allow_pickle=True")
        self.generic_visit(node)


def _weights_only_true(call: ast.Call) -> bool:
    return any(
        kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
        for kw in call.keywords
    )


def find_pickle_uses(source: str, filename: str = "<string>") -> list[str]:
    """Every pickle-based serialisation in ``source``, as ``file:line: what``."""
    checker = _Checker(filename)
    checker.visit(ast.parse(source, filename=filename))
    return checker.problems


def python_files() -> list[Path]:
    return sorted(p for root in SCANNED if root.exists() for p in root.rglob("*.py") if "__pycache__" not in p.parts)


# -- self-test: the checker catches what it should and nothing else ------------

BAD = {
    "import pickle": "import pickle",
    "import pickle as pk\npk.dumps(1)": "import pickle",
    "from pickle import loads": "from pickle import",
    "import cloudpickle": "import cloudpickle",
    "import joblib\njoblib.dump(model, 'm.joblib')": "joblib.dump",
    "from joblib import dump": "from joblib import dump",
    "import torch\ntorch.save(model.state_dict(), 'm.pt')": "torch.save",
    "import torch as th\nth.save(x, 'x.pt')": "torch.save",
    "from torch import save\nsave(x, 'x.pt')": "torch.save",
    "import torch\nsd = torch.load('m.pt')": "torch.load",
    "import torch\nsd = torch.load('m.pt', weights_only=False)": "torch.load",
    "import torch\nsd = torch.load('m.pt', **kw)": "torch.load",
    "from torch import load as tl\ntl('m.pt')": "torch.load",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)": "allow_pickle",
    "df.to_pickle('x.pkl')": "to_pickle",
    "def f():\n    import pickle\n    return pickle.dumps(1)": "import pickle",
}

GOOD = [
    '"""We never use pickle; torch.save( is forbidden, import pickle too."""',
    "# import pickle\n# torch.load('x')",
    "import torch\nsd = torch.load('m.pt', weights_only=True, map_location='cpu')",
    "from safetensors.torch import save_file, load_file\nsave_file(t, 'x.safetensors')",
    "import numpy as np\nnp.load('a.npy')\nnp.load('b.npy', allow_pickle=False)",
    "model.save_pretrained(out, safe_serialization=True)",
    "text = 'torch.save(x) and import pickle are not allowed'",
    "import json\njson.dump(obj, f)",
    "def save(x):\n    return x\nsave(1)",  # a local `save` is not torch.save
]


@pytest.mark.parametrize("snippet,expected", list(BAD.items()))
def test_checker_flags_bad_snippets(snippet, expected):
    problems = find_pickle_uses(textwrap.dedent(snippet), "bad.py")
    assert problems, f"not flagged:\n{snippet}"
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("bad.py:") for p in problems)


@pytest.mark.parametrize("snippet", GOOD)
def test_checker_allows_safe_code_and_mentions(snippet):
    assert find_pickle_uses(snippet) == []


def test_checker_reports_the_line():
    (problem,) = find_pickle_uses("x = 1\n\nimport torch\ny = torch.load('a')\n", "m.py")
    assert problem.startswith("m.py:4:")


# -- the real code ---------------------------------------------------------------


def test_no_pickle_in_package_or_benchmarks():
    files = python_files()
    assert any(p.parent.name == "persona_pipeline" for p in files), "persona_pipeline/ not found"
    problems = []
    for path in files:
        problems += find_pickle_uses(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert not problems, "pickle-based serialisation found (use safetensors / JSON / Parquet):\n" + "\n".join(problems)


def test_artifacts_are_safetensors_not_pickles():
    raw = os.environ.get("PERSONA_PIPELINE_HOME")
    if not raw or not Path(raw).is_dir():
        pytest.skip("PERSONA_PIPELINE_HOME is not set to an existing folder: no artifacts to check")
    home = Path(raw)
    bad = []
    for dirpath, dirnames, filenames in os.walk(home):
        dirnames[:] = [d for d in dirnames if d not in THIRD_PARTY_CACHES]
        bad += [
            str((Path(dirpath) / f).relative_to(home))
            for f in filenames
            if Path(f).suffix.lower() in FORBIDDEN_SUFFIXES
        ]
    assert not bad, f"pickle-format files under {home} (models and tensors must be .safetensors):\n" + "\n".join(
        sorted(bad)
    )
    # and every model / adapter folder carries its weights as safetensors
    for config in [*home.rglob("adapter_config.json"), *home.rglob("config.json")]:
        if THIRD_PARTY_CACHES & set(config.relative_to(home).parts):
            continue
        if config.name == "config.json" and "architectures" not in json.loads(config.read_text(encoding="utf-8")):
            continue  # some other config.json, not a transformers model folder
        assert list(config.parent.glob("*.safetensors")), f"{config.parent} has no .safetensors weights"
