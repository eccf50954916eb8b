"""The SQL files relay ships, and the named queries Python runs.

Every statement the Python code sends lives in ``sql/``: migrations as numbered files, the
definitions (every function and view, as they are now) in ``sql/functions/``, and the queries in
``sql/queries/``, one file per stage of a change's way (capture.sql, fanout.sql, claim.sql, ...),
each under a ``-- name: <name>`` line, loaded once by name. A piece of SQL that several queries
share (a select list, the byte cap) is written once, under a ``-- fragment: <name>`` line of
``sql/queries/fragments.sql``, and put where a query says ``/*> <name> */`` when the queries are
loaded, so that a copy can never be changed without the others. An installed wheel carries the
folder as ``relay/sql``; a source checkout reads the top-level one.
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
    """Split a file of ``-- name: <name>`` sections into {name: statement} (bench/claims.py
    reads an older relay's sql/queries.sql with it)."""
    parts = _QUERY_NAME.split(text)
    named: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in named:
            raise RuntimeError(f"query {name!r} is defined twice")
        named[name] = body.strip().rstrip(";")
    return named


QUERIES = "queries"
"""The folder of sql/ that holds the named queries and their fragments."""

_SECTION = re.compile(r"^-- (name|fragment): (\w+)\s*$", re.MULTILINE)
_MARKER = re.compile(r"/\*> (\w+) \*/")
_KINDS = {"name": "query", "fragment": "fragment"}


def _fragment_text(body: str) -> str:
    """A fragment as it is put in place: without the comment lines that open it (they say what
    it is, and a comment put mid-line would hide the rest of that line)."""
    lines = body.strip().splitlines()
    while lines and lines[0].startswith("--"):
        lines.pop(0)
    return "\n".join(lines).strip()


def _put_in(text: str, fragments: dict[str, str], where: str) -> str:
    """``text`` with every ``/*> name */`` replaced by that fragment, its lines after the first
    indented to the marker's column; RuntimeError naming ``where`` for an unknown fragment."""

    def fragment(found: re.Match[str]) -> str:
        if found[1] not in fragments:
            raise RuntimeError(
                f"{where} uses fragment {found[1]!r}, which no file of sql/{QUERIES} defines"
            )
        column = found.start() - (text.rfind("\n", 0, found.start()) + 1)
        return fragments[found[1]].replace("\n", "\n" + " " * column)

    return _MARKER.sub(fragment, text)


def load(folder: Path) -> dict[str, str]:
    """Every named query of the files in ``folder``, by name, with its fragments put in place.

    RuntimeError when a query or a fragment is defined twice (in one file or two), when a query
    uses a fragment that no file defines, when a fragment is used by no query, and when a
    fragment uses itself (through others): each names the files, so the one to edit is plain."""
    found: dict[str, dict[str, tuple[str, str]]] = {"name": {}, "fragment": {}}
    for path in sorted(folder.glob("*.sql")):
        parts = _SECTION.split(path.read_text(encoding="utf-8"))
        for kind, name, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
            if name in found[kind]:
                raise RuntimeError(
                    f"{_KINDS[kind]} {name!r} is defined twice: in {found[kind][name][0]} and in "
                    f"{path.name} (sql/{QUERIES}); rename or remove one"
                )
            found[kind][name] = (path.name, body)
    fragments: dict[str, str] = {}

    def expand(name: str, using: tuple[str, ...]) -> None:
        """Put fragment ``name`` in ``fragments`` with the fragments it uses in place."""
        file, body = found["fragment"][name]
        for inner in _MARKER.findall(body):
            if inner in using:
                raise RuntimeError(
                    f"fragment {name!r} ({file}) uses itself: {' -> '.join((*using, inner))}"
                )
            if inner in found["fragment"] and inner not in fragments:
                expand(inner, (*using, inner))
        fragments[name] = _put_in(_fragment_text(body), fragments, f"fragment {name!r} ({file})")

    for name in found["fragment"]:
        if name not in fragments:
            expand(name, (name,))
    named = {
        name: _put_in(body.strip(), fragments, f"query {name!r} ({file})").rstrip(";")
        for name, (file, body) in found["name"].items()
    }
    used = {
        inner
        for _, body in (*found["name"].values(), *found["fragment"].values())
        for inner in _MARKER.findall(body)
    }
    unused = sorted(set(fragments) - used)
    if unused:
        raise RuntimeError(f"fragments no query uses in sql/{QUERIES}: {unused}; remove them")
    return named


@cache
def queries() -> dict[str, str]:
    """Every named query of sql/queries/, by name, read once."""
    return load(sql_dir() / QUERIES)


def query(name: str) -> str:
    """The statement called ``name`` in sql/queries/; a KeyError that says where it looked when
    there is none."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {sql_dir() / QUERIES}/*.sql") from None


def latest_version() -> int:
    """The migration a fully upgraded installation has applied last."""
    return migrations()[-1].version
