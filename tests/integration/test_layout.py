"""The layout docs/architecture.md draws: layers import downwards only, and only the store
talks to the database."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "relay"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_layer_imports_only_the_layers_below_it() -> None:
    checked = lint_imports(REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "5 kept, 0 broken" in checked.stdout


def test_an_import_upwards_breaks_the_layering(tmp_path: Path) -> None:
    """The check bites: the model importing the command line is reported, by name."""
    shutil.copytree(PACKAGE, tmp_path / "relay", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    model = tmp_path / "relay" / "model.py"
    model.write_text(model.read_text() + "\nimport relay.cli.main  # noqa\n")
    checked = lint_imports(tmp_path)
    assert checked.returncode != 0
    assert "relay.model is not allowed to import relay.cli" in checked.stdout


def _calls(path: Path, name: str) -> int:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return sum(
        1
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == name)
            or (isinstance(node.func, ast.Attribute) and node.func.attr == name)
        )
    )


def test_only_the_store_runs_statements() -> None:
    """Named queries run in relay/store.py alone; the other statements sent anywhere are the
    application's own tag (relay.tag, the Django middleware), the throwaway cluster's
    CREATE DATABASE, and the first statement of every session, which pins its search path
    (relay/db.py)."""
    others = {"capture/tag.py", "contrib/django.py", "tempcluster.py", "db.py"}
    for path in PACKAGE.rglob("*.py"):
        where = path.relative_to(PACKAGE).as_posix()
        if where in {"store.py", "sqlfiles.py"}:
            continue
        assert _calls(path, "query") == 0, f"{where} runs a named query: move it to store.py"
        if where not in others:
            assert _calls(path, "execute") == 0, f"{where} sends SQL: move it to store.py"


def test_only_relay_db_opens_connections() -> None:
    """Every session relay opens starts on the search path no other role can write to
    (relay/db.py, SEARCH_PATH): so no module but relay/db.py calls psycopg's connect, and the
    admin's SQLAlchemy engine (relay/admin.py) gets its connections from it too (a ``creator``)."""
    for path in PACKAGE.rglob("*.py"):
        where = path.relative_to(PACKAGE).as_posix()
        text = path.read_text(encoding="utf-8")
        if where != "db.py":
            assert "psycopg.connect" not in text and "Connection.connect" not in text, (
                f"{where} opens a connection: use relay.db.connect or aconnect"
            )
        if "create_engine(" in text:
            assert "creator=" in text, f"{where}: give the engine relay.db.connect as creator"


def test_every_named_query_is_run_by_the_store() -> None:
    names = [
        name
        for path in sorted((REPO / "sql" / "queries").glob("*.sql"))
        for name in re.findall(r"^-- name: (\w+)", path.read_text(), re.M)
    ]
    store = (PACKAGE / "store.py").read_text()
    unused = [name for name in names if f'"{name}"' not in store]
    assert not unused, f"named queries the store never runs: {unused}"


def _undocumented(path: Path) -> list[str]:
    """The public names in ``path`` without a docstring: the module itself, its functions and
    classes, and the methods and properties of its public classes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    where = path.relative_to(REPO).as_posix()
    missing = [f"{where}: module"] if ast.get_docstring(tree) is None else []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if node.name.startswith("_"):
                continue
            if ast.get_docstring(node) is None:
                missing.append(f"{where}:{node.lineno}: {prefix}{node.name}")
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body, "")
    return missing


def test_every_public_name_is_documented() -> None:
    """As psycopg: every module opens with a docstring, and so does every public function,
    class, method and property (``__main__.py`` only runs a command)."""
    missing = [
        name
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__main__.py"
        for name in _undocumented(path)
    ]
    assert not missing, "public names without a docstring:\n" + "\n".join(missing)


def test_the_command_line_starts_without_what_only_some_commands_use() -> None:
    """``relay --version`` and every command's start import the command line whole: what only
    the relay, a replay, a backfill or the demo needs (aiohttp, structlog, rich's progress bars),
    the webhook and rule commands (SQLAlchemy) or the commands that read settings (pydantic) is
    imported when they run, not by every command (``relay --version`` took 1.2 s)."""
    probe = (
        "import sys, relay.cli.main; "
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert {"aiohttp", "structlog", "sqlalchemy", "pydantic", "pydantic_settings"} & set(
        loaded
    ) == set()
    progress = subprocess.run(
        [sys.executable, "-c", "import sys, relay.cli.main; print('rich.progress' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert progress.stdout.strip() == "False"
