"""The test tiers of tests/conftest.py: every entry names a test or fixture that exists (a renamed
test must not drop out of its tier unnoticed), and the rules give the markers README "Tests" names."""

from __future__ import annotations

import ast
from fnmatch import fnmatchcase
from pathlib import Path

import conftest
from conftest import NETWORK_FIXTURES, SLOW_FIXTURES, TIERS, tier_markers

TESTS = Path(__file__).resolve().parent


def functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def is_fixture(function: ast.FunctionDef) -> bool:
    return any("fixture" in ast.unparse(decorator) for decorator in function.decorator_list)


def test_every_tier_key_names_a_test_that_exists():
    for key in TIERS:
        file, _, pattern = key.partition("::")
        assert (TESTS / file).is_file(), f"TIERS[{key!r}]: there is no tests/{file}"
        names = [name for name in functions(TESTS / file) if name.startswith("test_")]
        assert not pattern or any(fnmatchcase(name, pattern) for name in names), (
            f"TIERS[{key!r}]: no test in tests/{file} is named like {pattern!r}")


def test_every_tier_fixture_exists():
    shared = {name for name, function in functions(TESTS / "conftest.py").items() if is_fixture(function)}
    assert NETWORK_FIXTURES <= shared
    for key in SLOW_FIXTURES:
        file, _, fixture = key.partition("::")
        function = functions(TESTS / file).get(fixture) if (TESTS / file).is_file() else None
        assert function and is_fixture(function), f"SLOW_FIXTURES: there is no fixture {fixture!r} in tests/{file}"


def test_markers_come_from_the_file_the_name_the_fixtures_and_the_real_mark(monkeypatch):
    monkeypatch.setattr(conftest, "TIERS", {"test_a.py": ("slow",), "test_b.py::test_*_browser": ("browser", "slow")})
    monkeypatch.setattr(conftest, "SLOW_FIXTURES", {"test_b.py::trained"})
    assert tier_markers("test_a.py", "test_anything", set(), set()) == {"slow"}
    assert tier_markers("test_b.py", "test_in_the_browser", set(), set()) == {"browser", "slow"}
    assert tier_markers("test_b.py", "test_browser_args", set(), set()) == set()
    assert tier_markers("test_b.py", "test_x", {"tmp_path", "trained"}, set()) == {"slow"}
    assert tier_markers("test_a2.py", "test_x", {"trained"}, set()) == set()  # another file's fixture of that name
    assert tier_markers("test_b.py", "test_x", {"real_tokenizer_dir"}, set()) == {"network"}
    assert tier_markers("test_c.py", "test_x", set(), {"real"}) == {"slow"}
    assert tier_markers("test_c.py", "test_x", set(), {"parametrize"}) == set()

