"""The systemd units in deploy/: what the issue asks of them, and systemd's own verdict."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from relay.tempcluster import find_server_binaries, start_temp_cluster
from support.db import one_row

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOC = DEPLOY.parent / "docs" / "deploy.md"
UNITS = {"relay.service": "relay.service", "relay@.service": "relay@orders.service"}


def settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("unit", UNITS)
def test_unit_is_a_hardened_notify_service(unit: str) -> None:
    found = settings((DEPLOY / unit).read_text())
    assert found["Type"] == ["notify"] and found["Restart"] == ["on-failure"]
    assert found["ExecStart"] == ["/opt/relay/bin/relay run"]
    assert found["EnvironmentFile"] == [
        "/etc/relay/relay.env" if unit == "relay.service" else "/etc/relay/%i.env"
    ]
    assert found["User"] == ["relay"] and found["WatchdogSec"] == ["30"]
    assert found["RestartPreventExitStatus"] == ["2"]  # configuration errors do not loop
    for hardening in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "RestrictNamespaces",
        "PrivateUsers",
        "RemoveIPC",
    ):
        assert found[hardening] == ["yes"], hardening
    assert found["ProtectSystem"] == ["strict"]
    assert found["ProcSubset"] == ["pid"] and found["DevicePolicy"] == ["closed"]
    assert found["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert found["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert found["CapabilityBoundingSet"] == [""]


HARDENING = [
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "DevicePolicy",
    "PrivateUsers",
    "ProcSubset",
    "RemoveIPC",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "ProtectProc",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "UMask",
    "User",
    "Group",
]


def test_the_console_unit_is_hardened_as_the_relay_and_listens_on_the_loopback() -> None:
    relay = settings((DEPLOY / "relay.service").read_text())
    found = settings((DEPLOY / "relay-console.service").read_text())
    assert {key: found[key] for key in HARDENING} == {key: relay[key] for key in HARDENING}
    assert found["ExecStart"] == ["/opt/relay/bin/relay console"]
    assert found["EnvironmentFile"] == ["/etc/relay/relay.env"]  # the relay's own settings
    assert found["Environment"] == ["RELAY_CONSOLE_LISTEN=127.0.0.1:8780"]
    assert found["Type"] == ["notify"] and found["Restart"] == ["on-failure"]
    assert found["RestartPreventExitStatus"] == ["2"] and found["WatchdogSec"] == ["30"]


@pytest.mark.parametrize("unit", [*UNITS, "relay-console.service"])
def test_systemd_analyze_verify_accepts_the_unit(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    relay = Path(sys.executable).parent / "relay"  # verify checks that ExecStart exists
    text = (DEPLOY / unit).read_text().replace("/opt/relay/bin/relay", str(relay))
    path = tmp_path / UNITS.get(unit, unit)
    path.write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if "relay" in line]
    assert complaints == []


def test_the_documented_pg_hba_line_and_an_encoded_password_let_the_service_role_in() -> None:
    """docs/deploy.md's pg_hba.conf line, on a private cluster (the shared one trusts
    127.0.0.1), and a password full of URL syntax, percent-encoded by the doc's one-liner."""
    if find_server_binaries() is None:
        pytest.skip("no PostgreSQL server binaries to start a private cluster")
    doc = DOC.read_text()
    line = re.search(r"^host\s+app\s+relay_service\s+(\S+)\s+scram-sha-256$", doc, re.M)
    encode = re.search(r"`(python3 -c '.*urllib\.parse.*') '(.*?)'`", doc)
    assert line and encode, "docs/deploy.md lost its pg_hba line or its encoding one-liner"
    password = encode[2] + " #%+?[]"  # the doc's example and the rest of what it lists
    encoded = subprocess.run(
        [*shlex.split(encode[1]), password], capture_output=True, text=True, check=True
    ).stdout.strip()
    cluster = start_temp_cluster()
    try:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE app")
            conn.execute(
                sql.SQL("CREATE ROLE relay_service LOGIN PASSWORD {}").format(sql.Literal(password))
            )
            hba = Path(one_row(conn.execute("SHOW hba_file"))[0])
        hba.write_text(line[0].replace(line[1], "127.0.0.1/32") + "\n" + hba.read_text())
        cluster.reload()
        server = f"127.0.0.1:{cluster.port}/app"
        with psycopg.connect(f"postgresql://relay_service:{encoded}@{server}") as c:
            assert c.execute("SELECT current_user").fetchone() == ("relay_service",)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(f"postgresql://relay_service:wrong@{server}")
    finally:
        cluster.stop()
