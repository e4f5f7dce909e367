"""Dependencies point one way: scripts import `llm_tuning`, never the reverse, and a script never
imports another script (by name or by file path). Read from the source with `ast`, nothing runs.

The module map in llm_tuning/__init__.py and the layouts of README.md and README_zh.md name
every library module, so the map stays the tree's.

A *script* is a .py file outside llm_tuning/ and tests/ with an `if __name__ == "__main__":`
block (an entry point a user runs). A folder may keep a module of its own without one (SDE's
design.py, RLHF/style.py): its scripts may import it, as they would a library.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARY = REPO_ROOT / "llm_tuning"
NOT_SCRIPTS = {"llm_tuning", "tests", ".venv", ".cache", "runs", "weights", "node_modules"}
# Calls that run or import a file by its path.
PATH_IMPORTS = {"spec_from_file_location", "run_path", "SourceFileLoader"}


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if not NOT_SCRIPTS & set(p.relative_to(REPO_ROOT).parts[:1])
                  and "/." not in str(p.relative_to(REPO_ROOT)))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def is_script(tree: ast.Module) -> bool:
    """True for a module with `if __name__ == "__main__":` at its top level."""
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)]
            constants = [n.value for n in ast.walk(node.test) if isinstance(n, ast.Constant)]
            if "__name__" in names and "__main__" in constants:
                return True
    return False


def imported_names(tree: ast.Module) -> list[tuple[int, str, int]]:
    """(line, dotted module name, relative level) of every import, at any depth (lazy imports too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
    return found


def path_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, call) of every call that imports or runs a file by path."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in PATH_IMPORTS:
                found.append((node.lineno, name))
    return found


def resolve_local(name: str, search: list[Path]) -> Path | None:
    """The repository file a top-level import name refers to, looked up as Python would from `search`."""
    first = name.split(".")[0]
    for folder in search:
        for candidate in (folder / f"{first}.py", folder / first / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


SCRIPT_FILES = {path for path in python_files(REPO_ROOT) if is_script(parse(path))}


def library_violations() -> list[str]:
    problems = []
    for path in sorted(LIBRARY.rglob("*.py")):
        tree, where = parse(path), path.relative_to(REPO_ROOT)
        for line, name, level in imported_names(tree):
            if level == 0 and resolve_local(name, [REPO_ROOT]) is not None and not name.startswith("llm_tuning"):
                problems.append(f"{where}:{line}: the library imports {name!r}, a file outside llm_tuning/")
            elif level == 0 and name.split(".")[0] == "tests":  # a folder without __init__.py: not resolved above
                problems.append(f"{where}:{line}: the library imports {name!r}: test code stays in tests/")
        for line, call in path_imports(tree):
            problems.append(f"{where}:{line}: the library loads a file by path ({call})")
    return problems


def shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else path.name


def script_violations(paths: list[Path] | None = None) -> list[str]:
    problems = []
    for path in paths or python_files(REPO_ROOT):
        tree, where = parse(path), shown(path)
        for line, name, level in imported_names(tree):
            target = resolve_local(name, [path.parent, REPO_ROOT]) if level == 0 else None
            if target is not None and target in SCRIPT_FILES and target != path:
                problems.append(f"{where}:{line}: imports the script {target.relative_to(REPO_ROOT)}; "
                                "move what they share into llm_tuning/ (or a module of the folder)")
        for line, call in path_imports(tree):
            problems.append(f"{where}:{line}: loads a file by path ({call}); run a script as a command instead")
    return problems


def test_the_checks_see_the_scripts():
    # The rules below are only as good as this list: every entry point the READMEs name is in it.
    names = {str(p.relative_to(REPO_ROOT)) for p in SCRIPT_FILES}
    assert {"chat.py", "merge_lora.py", "qwen_lora_tuning.py", "RLHF/ppo.py", "RLHF/make_rlhf_data.py",
            "pretrain/continue_pretraining.py", "SDE/run_sde.py", "projects/ChatBaichuan-HC3/convert_hc3.py",
            "projects/ChatBaichuan-HC3/run_hc3.py"} <= names
    assert not {"SDE/design.py", "RLHF/style.py", "projects/ChatBaichuan-HC3/hc3.py"} & names


def test_the_library_never_imports_a_script():
    problems = library_violations()
    assert not problems, "\n".join(problems)


def test_no_script_imports_another_script():
    problems = script_violations()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source, expected", [
    ("import chat\n", "imports the script chat.py"),
    ("from merge_lora import main\n", "imports the script merge_lora.py"),
    ("import importlib.util\nspec = importlib.util.spec_from_file_location('x', 'chat.py')\n", "loads a file by path"),
    ("import runpy\nrunpy.run_path('chat.py')\n", "loads a file by path"),
])
def test_a_violation_is_reported_with_its_line(tmp_path, source, expected):
    bad = tmp_path / "probe.py"
    bad.write_text(source + 'if __name__ == "__main__":\n    pass\n', encoding="utf-8")
    problems = script_violations([bad])
    assert len(problems) == 1 and problems[0].startswith("probe.py:") and expected in problems[0]


def library_modules() -> list[str]:
    """`name.py` for each module of llm_tuning/, `name/` for each subpackage."""
    return sorted([p.name for p in LIBRARY.glob("*.py") if p.name != "__init__.py"]
                  + [f"{p.name}/" for p in LIBRARY.iterdir() if (p / "__init__.py").is_file()])


def test_the_module_map_and_the_readme_layouts_name_every_library_module():
    import llm_tuning

    in_map = [m for m in library_modules()
              if not re.search(rf"\b{m.removesuffix('.py').rstrip('/')}\b", llm_tuning.__doc__)]
    assert not in_map, f"llm_tuning/__init__.py's module map does not name {in_map}"
    for readme in ("README.md", "README_zh.md"):
        text = (REPO_ROOT / readme).read_text(encoding="utf-8")
        start = text.index("\nllm_tuning/ ")
        layout = text[start:text.index("```", start)]
        missing = [m for m in library_modules() if not re.search(rf"(?<![\w/]){re.escape(m)}", layout)]
        assert not missing, f"the layout in {readme} does not name {missing}"
