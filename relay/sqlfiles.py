"""The SQL files relay ships, and the named queries Python runs.

Every statement the Python code sends lives in ``sql/``: migrations as numbered files, the
definitions (every function and view, as they are now) in ``sql/functions/``, and the queries in
``sql/queries.sql``, each under a ``-- name: <name>`` line, loaded once by name. An installed
wheel carries the folder as ``relay/sql``; a source checkout reads the top-level one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
_QUERY_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def sql_dir() -> Path:
    """The sql/ folder: an installed wheel's copy, else a checkout's; FileNotFoundError when neither
    is there."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "install.sql").is_file():
            return candidate
    raise FileNotFoundError(f"relay's sql/ folder is missing (looked beside {here})")


def read(name: str) -> str:
    """A file of sql/ by its path there (``demo.sql``, ``migrations/0001_capture.sql``)."""
    return (sql_dir() / name).read_text(encoding="utf-8")


_INCLUDE = re.compile(r"^\\ir (\S+)$", re.MULTILINE)


def script(name: str) -> str:
    """A psql script in one piece: the file with every ``\\ir`` replaced by what it includes
    (for an operator who has the package and psql, but no checkout)."""
    return _INCLUDE.sub(lambda m: script(m[1]).rstrip("\n"), read(name))


@dataclass(frozen=True)
class Migration:
    """A numbered file of sql/migrations; applying it also records it in relay.migrations."""

    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        """The file's text, read from disk each time it is asked for (not cached)."""
        return self.path.read_text(encoding="utf-8")


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration in version order, found once; RuntimeError when the numbers skip one, so that
    none is ever left out."""
    found = []
    for path in sorted((sql_dir() / "migrations").iterdir()):
        match = _MIGRATION_FILE.match(path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..N without gaps, found {versions}")
    return tuple(found)


_DEFINITION = re.compile(r"^\\ir ((?:functions/\w+|definitions)\.sql)$", re.MULTILINE)


@cache
def definitions() -> tuple[str, ...]:
    """The files every install applies after the migrations, in the order sql/install.sql runs
    them (that list is the only one): sql/functions/*.sql, then sql/definitions.sql."""
    return tuple(_DEFINITION.findall(read("install.sql")))


_DEFINITIONS_VERSION = re.compile(r"^\\set relay_definitions (\d+)$", re.MULTILINE)


def definitions_version() -> int:
    """The version of the definitions (install.sql's relay_definitions): one more with every
    change to them, so that an install can refuse to put older ones over newer ones."""
    found = _DEFINITIONS_VERSION.search(read("install.sql"))
    if found is None:
        raise RuntimeError("sql/install.sql sets no relay_definitions")
    return int(found[1])


def definitions_digest() -> str:
    """What the definitions' files hold, as a SHA-256: relay install skips them when the database
    holds the same (relay.definitions)."""
    digest = hashlib.sha256()
    for name in definitions():
        digest.update(name.encode() + b"\0" + read(name).encode() + b"\0")
    return digest.hexdigest()


def parse_named(text: str) -> dict[str, str]:
    """Split a file of ``-- name: <name>`` sections into {name: statement}."""
    parts = _QUERY_NAME.split(text)
    named: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in named:
            raise RuntimeError(f"query {name!r} is defined twice")
        named[name] = body.strip().rstrip(";")
    return named


@cache
def queries() -> dict[str, str]:
    """Every named query of sql/queries.sql by name, read once."""
    return parse_named(read("queries.sql"))


def query(name: str) -> str:
    """The statement called ``name`` in sql/queries.sql; a KeyError that says where it looked when
    there is none."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/queries.sql") from None


def latest_version() -> int:
    """The migration a fully upgraded installation has applied last."""
    return migrations()[-1].version
