"""The package's import direction (docs/layout.md): every `import vartok...` inside the package, at the top of a
module or inside a function, goes to its own layer or a lower one; nothing in the package imports tests."""

from __future__ import annotations

import ast
from pathlib import Path

import vartok

ROOT = Path(vartok.__file__).parent
LAYERS = {"distributed": 0, "nets": 0, "pixels": 0, "data": 1, "models": 2, "tokenizers": 3, "metrics": 4, "convert": 4, "training": 5,
          "cli": 6}


def layer(module: str) -> int | None:
    """The layer of a dotted vartok module name (None for the package root)."""
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else None


def imports(path: Path) -> list[str]:
    """Every module name an import statement of `path` names (absolute imports only: the package uses no others)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.append(node.module or "")
    return names


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        found.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return found


def test_every_top_level_part_has_a_layer() -> None:
    parts = {path.relative_to(ROOT).parts[0].removesuffix(".py") for _, path in modules()} - {"__init__"}
    assert parts == set(LAYERS)


def test_imports_never_run_back_up() -> None:
    upward = []
    for name, path in modules():
        own = layer(name)
        for target in imports(path):
            if target.startswith("tests"):
                upward.append(f"{name} imports {target} (test code)")
            if not target.startswith("vartok.") or own is None:
                continue
            if layer(target) > own:
                upward.append(f"{name} (layer {own}) imports {target} (layer {layer(target)})")
            if own == 0 and target.split(".")[1] != name.split(".")[1]:
                upward.append(f"{name} is a leaf but imports {target}")
    assert not upward, "\n".join(upward)


def test_the_oracle_sees_an_upward_import(tmp_path) -> None:
    """The check itself: a models module importing metrics would be reported."""
    assert layer("vartok.metrics.quality") > layer("vartok.models.vit")
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from vartok.metrics.quality import psnr_per_image\n")
    assert imports(bad) == ["vartok.metrics.quality"]
