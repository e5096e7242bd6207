"""The package's shape: Dagster only under ``persona_pipeline/defs``; the core imports no Dagster."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "persona_pipeline"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_module_outside_defs_imports_dagster():
    core = [p for p in PACKAGE.rglob("*.py") if "defs" not in p.relative_to(PACKAGE).parts]
    assert len(core) > 20, "the core modules were not found"
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in _imported_modules(p) if m.split(".")[0].startswith("dagster"))
        for p in core
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_dagster_code_lives_in_defs():
    defs = PACKAGE / "defs"
    using = [p for p in defs.rglob("*.py") if any(m.split(".")[0] == "dagster" for m in _imported_modules(p))]
    assert (defs / "definitions.py") in using and len(using) >= 10
