"""The package layering of STYLE.md rule 14, checked on the import statements themselves."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2] / "raytune_ft"
ALLOWED = {
    "config": set(),
    "data": {"config"},
    "models": {"config"},
    "train": {"config", "data", "models"},
    "rl": {"config", "data", "models", "train"},
    "tune": {"config", "data", "models", "train", "rl"},
    "serve": {"config", "data", "models", "train"},
    "export": {"config", "data", "models", "train"},
    "evaluate": {"config", "data", "models", "train"},
    "dashboard": {"config", "data", "models", "train", "rl", "tune", "serve", "export", "evaluate"},
    "cli": {"config", "data", "models", "train", "rl", "tune", "serve", "export", "evaluate", "dashboard"},
}
HEAVY = {"vllm", "deepspeed", "streamlit"}


def stage_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def absolute(path: Path, node: ast.ImportFrom) -> str:
    """``from ..train import x`` inside raytune_ft/serve/chat.py -> ``raytune_ft.train``."""
    package = ["raytune_ft", *path.relative_to(ROOT).parent.parts]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_stages(path: Path) -> set[str]:
    stages = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names = [absolute(path, node) if node.level else node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "raytune_ft" and len(parts) > 1:
                stages.add(parts[1])
    return stages


def test_relative_imports_are_resolved() -> None:
    node = ast.parse("from ..train import x").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert absolute(ROOT / "serve" / "chat.py", node) == "raytune_ft.train"


def test_stages_only_import_earlier_stages() -> None:
    modules = [p for p in ROOT.rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT]
    assert len(modules) > 10
    for path in modules:
        stage = stage_of(path)
        if stage not in ALLOWED:
            continue
        illegal = imported_stages(path) - ALLOWED[stage] - {stage}
        assert not illegal, f"{path.relative_to(ROOT)} ({stage}) imports {sorted(illegal)}"


def test_heavy_modules_are_imported_lazily() -> None:
    """Heavy modules load only where used; the dashboard's modules run inside Streamlit, so it may import that."""
    for path in ROOT.rglob("*.py"):
        allowed = {"streamlit"} if stage_of(path) == "dashboard" else set()
        for node in ast.parse(path.read_text()).body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            heavy = {n.split(".")[0] for n in names} & HEAVY - allowed
            assert not heavy, f"{path.relative_to(ROOT)} imports {heavy} at module level"


def test_every_module_has_a_docstring() -> None:
    for path in ROOT.rglob("*.py"):
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(ROOT)} has no module docstring"


def test_tokenizer_tasks_import_neither_torch_nor_transformers() -> None:
    """Ray Data tokenizer tasks import the data and models packages and load a tokenizer; torch or
    transformers would add seconds before a worker's first rows (bench/tokenize_throughput.py)."""
    import subprocess
    import sys

    code = (
        "import sys, functools; import raytune_ft.data, raytune_ft.models; "
        "from raytune_ft.data.pipeline import tokenize_task; "
        "raytune_ft.models.load_row_tokenizer('builtin:smollm2-135m-instruct'); "
        "print(sorted(m for m in ('torch', 'peft', 'ray.train', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
