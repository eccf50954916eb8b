"""The contract between sql/queries.sql and the code that runs it: every named query prepares
on a fresh install (a query only a rare path runs, an error case or an upgrade's, fails here
rather than in front of an operator), PostgreSQL knows the type of each of its parameters from
the query itself (none is sent as text of unknown type for the server to guess), and every
name is one relay's code asks for, so no query outlives its caller."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from relay import sqlfiles
from relay.db import Conn
from relay.tempcluster import scratch_database

PARAMETER = re.compile(r"%\((\w+)\)s")
UNKNOWN_TYPES = {0, 705}
"""Type oids PostgreSQL gives a parameter it could not type: none, ``unknown``."""
RELAY = Path(__file__).resolve().parent.parent / "relay"


def numbered(text: str) -> tuple[str, list[str]]:
    """The query with psycopg's named parameters as PostgreSQL's $1, $2 (a name used twice is
    one parameter, as psycopg sends it), and the names in their order."""
    names: list[str] = []

    def number(found: re.Match[str]) -> str:
        if found[1] not in names:
            names.append(found[1])
        return f"${names.index(found[1]) + 1}"

    return PARAMETER.sub(number, text).replace("%%", "%"), names


@pytest.fixture(scope="module")
def installed(server_dsn: str, installed_template: str) -> Iterator[Conn]:
    """One fresh install for every query (preparing changes nothing)."""
    with (
        scratch_database(server_dsn, "relay_queries", installed_template) as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        yield conn


@pytest.mark.parametrize("name", sorted(sqlfiles.queries()))
def test_each_named_query_prepares_with_every_parameter_typed(installed: Conn, name: str) -> None:
    text, names = numbered(sqlfiles.query(name))
    prepared = installed.pgconn.prepare(name.encode(), text.encode())
    assert prepared.status == psycopg.pq.ExecStatus.COMMAND_OK, prepared.error_message.decode()
    described = installed.pgconn.describe_prepared(name.encode())
    assert described.nparams == len(names)
    untyped = [
        names[i] for i in range(described.nparams) if described.param_type(i) in UNKNOWN_TYPES
    ]
    assert untyped == [], f"give these a cast in the query: {untyped}"


def test_every_named_query_is_asked_for_by_name_in_relay() -> None:
    code = "".join(path.read_text() for path in RELAY.rglob("*.py"))
    named = set(re.findall(r'"(\w+)"', code))
    assert sorted(set(sqlfiles.queries()) - named) == []
