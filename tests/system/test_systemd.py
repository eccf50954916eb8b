"""relay installed the way docs/deploy.md says and run by a real systemd (opt-in: ./test --systemd).

The machine is a systemd-nspawn container booted from an overlay of this host's own root (so it
has the host's packages and nothing to download), sharing the host's network: the relay in it
reaches the test PostgreSQL and the test receiver on 127.0.0.1. Sections 1 to 3 of the doc run
as written, but for the few substitutions in ``as_tested`` (each must still match the doc, so
doc and test change together). Needs root and systemd-nspawn (Debian: systemd-container, at
the version of the installed systemd); without them the tests are skipped with one line saying
why.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from relay.render import sign
from relay.tempcluster import scratch_database
from support.receivers import Receiver, free_port, receiver

pytestmark = pytest.mark.xdist_group("systemd")
"""One container for the module: its tests go to one worker of ./test's (--dist loadgroup)."""

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "deploy.md"
UNIT = REPO / "deploy" / "relay.service"
WHEELS = "/run/relay-wheels"
"""Where the container sees the wheels built from this checkout."""
ENTER = ["nsenter", "--all"]
CLEAN_ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
"""A root login's environment, not this test process's."""
UNSHARE = ["unshare", "--mount", "--propagation", "private"]
SECRET = "orders-secret-0123456789"

BOOT = """
set -e
base=$1 checkout=$2 wheels=$3 seen_as=$4
mount -t tmpfs -o mode=0755 relay-nspawn "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
rm -f "$base/root/etc/machine-id"
exec systemd-nspawn --quiet --directory="$base/root" --boot --register=no --keep-unit \
    --machine=relay-test --bind-ro="$checkout" --bind-ro="$wheels:$seen_as" \
    -- systemd.unit=sysinit.target
"""
"""Run in a mount namespace of its own (unshare), so the overlay goes when the container does.
The upper layer is a tmpfs: overlayfs refuses an upper directory inside its lower one, /.
The container boots to sysinit.target only (journald and the like), not to the host's
services; starting relay.service pulls in what it needs."""


@dataclass
class Machine:
    """The booted container, driven the way an operator's root shell would."""

    leader: int

    def sh(self, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*ENTER, f"--target={self.leader}", *CLEAN_ENV, "bash", "-euo", "pipefail", "-s"],
            input=script,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"
        return result

    def show(self, unit: str) -> dict[str, str]:
        """``systemctl show``: the unit's state as systemd sees it."""
        text = self.sh(f"systemctl show {unit}").stdout
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def journal(self, unit: str, since: float) -> str:
        return self.sh(f"journalctl --no-pager -o cat -u {unit} --since=@{int(since)}").stdout

    def now(self) -> float:
        return float(self.sh("date +%s.%N").stdout)


@dataclass
class Deployment:
    machine: Machine
    owner_dsn: str
    role: str
    metrics_port: int
    hook: Receiver


def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def nspawn_cgroups() -> list[Path]:
    """Where ``systemd-nspawn --keep-unit`` puts itself and the container: ``supervisor`` and
    ``payload`` under this process's own cgroup, in the unified and name=systemd hierarchies.
    It leaves them behind, empty, when the container is gone."""
    unified = Path("/sys/fs/cgroup/unified")
    roots = {
        "": unified if (unified / "cgroup.procs").exists() else Path("/sys/fs/cgroup"),
        "name=systemd": Path("/sys/fs/cgroup/systemd"),
    }
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, hierarchy, path = line.split(":", 2)
        if hierarchy in roots:
            base = roots[hierarchy] / path.lstrip("/")
            found += [base / "supervisor", base / "payload"]
    return found


def remove_empty_cgroups(top: Path) -> None:
    """rmdir, deepest first: the kernel refuses a cgroup that still has processes."""
    for folder, _, _ in sorted(os.walk(top, topdown=False), key=lambda w: -len(w[0])):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def boot_problem() -> str | None:
    if os.geteuid() != 0:
        return "booting a container needs root"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is not installed (Debian: apt-get install systemd-container)"
    return None


@pytest.fixture(scope="module")
def machine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machine]:
    if not request.config.getoption("--systemd"):
        pytest.skip("opt-in: ./test --systemd runs relay under a real systemd in a container")
    problem = boot_problem()
    if problem:
        pytest.skip(f"no systemd container: {problem}")
    work = tmp_path_factory.mktemp("nspawn")
    wheels = work / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (work / "base").mkdir()
    leftovers = [cgroup for cgroup in nspawn_cgroups() if not cgroup.exists()]
    log = (work / "boot.log").open("w+")
    boot = subprocess.Popen(
        [*UNSHARE, "sh", "-c", BOOT, "boot", str(work / "base"), str(REPO), str(wheels), WHEELS],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    leader = 0
    try:
        leader = _container_init(boot, log)
        box = Machine(leader)
        deadline, state = time.monotonic() + 30, "offline"
        while state not in ("running", "degraded") and time.monotonic() < deadline:
            time.sleep(0.2)  # "offline" until its systemd listens, then "starting" while it boots
            state = box.sh("systemctl is-system-running", check=False).stdout.strip()
        if state not in ("running", "degraded"):
            pytest.skip(f"the container's systemd did not come up: {state}")
        yield box
    finally:
        power_off(boot, leader)
        log.close()
        for cgroup in leftovers:
            remove_empty_cgroups(cgroup)


def power_off(boot: subprocess.Popen[bytes], leader: int) -> None:
    """Ask the container to power off (systemd-nspawn turns SIGTERM into that). A systemd too
    early in its boot to listen is killed instead, and the whole container with it: SIGKILL to
    the first process of a PID namespace ends every process in it."""
    boot.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        boot.wait(20)
        return
    if leader:
        with contextlib.suppress(ProcessLookupError):
            os.kill(leader, signal.SIGKILL)
    try:
        boot.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(boot.pid, signal.SIGKILL)
        boot.wait(10)


def _container_init(boot: subprocess.Popen[bytes], log: IO[str]) -> int:
    """The host PID of the container's systemd: the child systemd-nspawn starts."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if boot.poll() is not None:
            log.seek(0)
            lines = [line.strip() for line in log if line.strip()] or ["no output"]
            pytest.skip(f"systemd-nspawn cannot boot here: {lines[-1]}")
        children = Path(f"/proc/{boot.pid}/task/{boot.pid}/children")
        for pid in children.read_text().split() if children.exists() else []:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                return int(pid)
        time.sleep(0.1)
    pytest.fail("systemd-nspawn started no systemd within 30 s")


@pytest.fixture(scope="module")
def hook() -> Iterator[Receiver]:
    """The webhook's receiver on 127.0.0.1, served from a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    serving = receiver()
    yield asyncio.run_coroutine_threadsafe(serving.__aenter__(), loop).result(10)
    asyncio.run_coroutine_threadsafe(serving.__aexit__(None, None, None), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def documented_commands() -> str:
    """The shell blocks of sections 1 to 3 of docs/deploy.md, in order."""
    text = DOC.read_text()
    steps = text[text.index("## 1. ") : text.index("## 4. ")]
    return "\n".join(re.findall(r"```sh\n(.*?)```", steps, re.DOTALL))


def as_tested(commands: str, owner: str, server: str, role: str, port: int, url: str) -> str:
    """The doc's commands with what must differ here put in; each substitution must match."""
    packages = re.search(r"^apt-get install -y (.+)$", commands, re.MULTILINE)
    assert packages, "the doc installs no packages with apt-get"
    substitutions = {
        # The container is this host: no mirror to install from, the packages must be there.
        packages[0]: f"dpkg-query --show {packages[1]}",
        "cd /path/to/relay-checkout": f"cd {REPO}",
        # Offline: the wheels the test built from this checkout.
        "/opt/relay/bin/pip install .": f"/opt/relay/bin/pip install --no-index -f {WHEELS} relay",
        "app_owner@db.example.internal:5432/app": owner,
        "db.example.internal:5432/app": server,
        "export ORDERS_SECRET=...": f"export ORDERS_SECRET={SECRET}",
        "https://hooks.example.com/orders": url,
        # What the operator's editor does: a metrics port free on this shared network.
        "editor /etc/relay/relay.env": f"sed -i 's|^RELAY_METRICS_ADDRESS=.*|"
        f"RELAY_METRICS_ADDRESS=127.0.0.1:{port}|' /etc/relay/relay.env #",
        # Roles are the whole server's: one of this run's own.
        "relay_service": role,
    }
    for old, new in substitutions.items():
        assert old in commands, f"docs/deploy.md no longer says {old!r}: update the test"
        commands = commands.replace(old, new)
    return commands


@pytest.fixture(scope="module")
def deployed(machine: Machine, server_dsn: str, hook: Receiver) -> Iterator[Deployment]:
    """Sections 1 to 3 of docs/deploy.md run in the container, against a database of its own
    with the application's table public.orders."""
    params = conninfo_to_dict(server_dsn)
    host, port = str(params.get("host") or ""), str(params.get("port") or 5432)
    if not host or host.startswith("/"):
        pytest.skip("the container reaches PostgreSQL over TCP only; the test server is a socket")
    role = f"relay_service_{uuid.uuid4().hex[:8]}"
    with scratch_database(server_dsn, "relay_systemd") as dsn:
        dbname = conninfo_to_dict(dsn)["dbname"]
        owner = f"{params.get('user', 'postgres')}@{host}:{port}/{dbname}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.orders (id int PRIMARY KEY, status text)")
        metrics_port = free_port()
        script = as_tested(
            documented_commands(), owner, f"{host}:{port}/{dbname}", role, metrics_port, hook.url
        )
        machine.sh(script)
        try:
            yield Deployment(machine, dsn, role, metrics_port, hook)
        finally:
            with psycopg.connect(server_dsn, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(str(dbname)))
                )
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def running(deployment: Deployment) -> dict[str, str]:
    """relay.service started (again, if an earlier test stopped it); its state."""
    deployment.machine.sh("systemctl reset-failed relay; systemctl start relay")
    return deployment.machine.show("relay")


def readyz(port: int) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        return response.status, response.read().decode()


HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "DevicePolicy": "closed",
    "PrivateUsers": "yes",
    "ProcSubset": "pid",
    "RemoveIPC": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "UMask": "0077",
}
"""Unit settings and the value ``systemctl show`` reports for them once systemd applied them."""


def test_relay_delivers_with_every_hardening_option(deployed: Deployment) -> None:
    machine = deployed.machine
    running(deployed)  # as docs/deploy.md's `systemctl enable --now` left it
    unit = UNIT.read_text()
    for key, value in HARDENING.items():
        assert f"\n{key}={value}\n" in unit, key
    state = machine.show("relay")
    # `systemctl enable --now` returned: the relay said READY=1, so it is connected already.
    assert (state["ActiveState"], state["SubState"]) == ("active", "running")
    assert readyz(deployed.metrics_port) == (200, "ready\n")
    assert {key: state[key] for key in HARDENING} == HARDENING
    assert "@resources" in unit and "setrlimit" not in state["SystemCallFilter"].split()
    main = state["MainPID"]
    # PrivateUsers: a user namespace mapping root and relay only; ProcSubset: no /proc/meminfo.
    uid_map = machine.sh(f"cat /proc/{main}/uid_map").stdout.split()
    assert sum(int(count) for count in uid_map[2::3]) == 2, uid_map
    assert machine.sh(f"nsenter -t {main} -m test -e /proc/meminfo", check=False).returncode == 1

    with psycopg.connect(deployed.owner_dsn, autocommit=True) as conn:
        stored = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (deployed.role,)
        ).fetchone()
        assert stored and stored[0].startswith("SCRAM-SHA-256$")  # what pg_hba's line needs
        conn.execute("INSERT INTO public.orders VALUES (42, 'paid')")
        until(lambda: len(deployed.hook.requests) == 1, 20, "the webhook")
        request = deployed.hook.requests[0]
        assert b"paid" in request.body and b"42" in request.body
        verdict = sign.verify(request.headers, request.body, SECRET)
        assert verdict is not None and verdict[1], request.headers
        until(
            lambda: (
                conn.execute("SELECT status::text FROM relay.outbox").fetchall() == [("delivered",)]
            ),
            10,
            "the change to be marked delivered",
        )

    score = re.search(r"rates the unit's exposure at (\d+\.\d)", DOC.read_text())
    assert score, "docs/deploy.md gives no exposure score"
    verdict_line = machine.sh("systemd-analyze security relay.service").stdout.splitlines()[-1]
    assert f"Overall exposure level for relay.service: {score[1]} " in verdict_line


def test_start_returns_once_connected_and_waits_while_the_database_is_down(
    deployed: Deployment,
) -> None:
    machine = deployed.machine
    running(deployed)
    machine.sh("systemctl restart relay")
    assert readyz(deployed.metrics_port) == (200, "ready\n")  # the moment restart returned

    closed = free_port()  # nothing listens there: the database is down
    machine.sh(
        f"""
        cd {REPO}
        install -m 0644 deploy/relay@.service /etc/systemd/system/relay@.service
        install -m 0640 -o root -g relay deploy/relay.env.example /etc/relay/down.env
        sed -i 's|^RELAY_DSN=.*|RELAY_DSN=postgresql://{deployed.role}@127.0.0.1:{closed}/app|
                s|^RELAY_METRICS_ADDRESS=.*|RELAY_METRICS_ADDRESS=|' /etc/relay/down.env
        mkdir -p /etc/systemd/system/relay@down.service.d
        printf '[Service]\\nTimeoutStartSec=4\\n' > /etc/systemd/system/relay@down.service.d/t.conf
        systemctl daemon-reload
        systemctl start --no-block relay@down
        """
    )
    time.sleep(2.5)
    state = machine.show("relay@down")
    assert (state["ActiveState"], state["SubState"]) == ("activating", "start")
    # After TimeoutStartSec systemd gives up on it, and Restart=on-failure starts it again.
    until(lambda: machine.show("relay@down")["NRestarts"] == "1", 15, "a restart")
    assert machine.show("relay@down")["ActiveState"] == "activating"
    machine.sh("systemctl stop relay@down")


def test_the_watchdog_leaves_a_live_relay_alone_and_restarts_a_stopped_one(
    deployed: Deployment,
) -> None:
    machine = deployed.machine
    # WatchdogSec=2 to see it work in seconds. A SIGSTOPped process leaves the watchdog's
    # SIGABRT pending, so systemd kills it after TimeoutAbortSec (by default TimeoutStopSec).
    machine.sh(
        """
        mkdir -p /etc/systemd/system/relay.service.d
        printf '[Service]\\nWatchdogSec=2\\nTimeoutAbortSec=2\\n' \
            > /etc/systemd/system/relay.service.d/watchdog.conf
        systemctl daemon-reload
        """
    )
    try:
        running(deployed)
        machine.sh("systemctl restart relay")
        before = machine.show("relay")
        assert before["WatchdogUSec"] == "2s"
        time.sleep(5)  # two and a half watchdog periods
        alive = machine.show("relay")
        assert (alive["ActiveState"], alive["MainPID"]) == ("active", before["MainPID"])
        assert alive["NRestarts"] == before["NRestarts"]

        since = machine.now()
        machine.sh(f"kill -STOP {before['MainPID']}")
        restarted(machine, before, 20)
        assert machine.show("relay")["MainPID"] != before["MainPID"]
        assert "Watchdog timeout" in machine.journal("relay", since)
    finally:
        machine.sh(
            "rm /etc/systemd/system/relay.service.d/watchdog.conf && systemctl daemon-reload"
        )


def restarted(machine: Machine, before: dict[str, str], seconds: float) -> None:
    """Wait until systemd has started the relay once more than ``before`` and it is active."""
    restarts = str(int(before["NRestarts"]) + 1)
    until(lambda: machine.show("relay")["NRestarts"] == restarts, seconds, "the restart")
    until(lambda: machine.show("relay")["ActiveState"] == "active", seconds, "active again")


def test_a_killed_relay_is_restarted(deployed: Deployment) -> None:
    machine = deployed.machine
    before = running(deployed)
    since = machine.now()
    machine.sh(f"kill -9 {before['MainPID']}")
    restarted(machine, before, 15)
    assert "status=9/KILL" in machine.journal("relay", since)
    assert readyz(deployed.metrics_port) == (200, "ready\n")


def test_stop_ends_the_relay_cleanly(deployed: Deployment) -> None:
    machine = deployed.machine
    running(deployed)
    started = time.monotonic()
    stopped = machine.sh("systemctl stop relay", check=False)
    assert stopped.returncode == 0 and time.monotonic() - started < 15
    state = machine.show("relay")
    assert (state["ActiveState"], state["Result"]) == ("inactive", "success")
    assert state["ExecMainStatus"] == "0"
    assert machine.sh("systemctl is-failed relay", check=False).stdout.strip() == "inactive"


@pytest.mark.parametrize(
    ("name", "setting", "says"),
    [
        ("bad-value", "RELAY_BATCH_SIZE=0", "RELAY_BATCH_SIZE"),
        ("bad-name", "RELAY_BATCH_SIZ=100", "did you mean RELAY_BATCH_SIZE?"),
    ],
)
def test_a_bad_setting_exits_2_and_is_not_restarted(
    deployed: Deployment, name: str, setting: str, says: str
) -> None:
    machine = deployed.machine
    instance = f"relay@{name}"
    since = machine.now()
    started = machine.sh(
        f"""
        cd {REPO}
        install -m 0644 deploy/relay@.service /etc/systemd/system/relay@.service
        grep -v '^RELAY_METRICS_ADDRESS=' /etc/relay/relay.env > /etc/relay/{name}.env
        echo '{setting}' >> /etc/relay/{name}.env
        systemctl daemon-reload
        systemctl start {instance}
        """,
        check=False,
    )
    assert started.returncode != 0
    time.sleep(3)  # longer than RestartSec=2
    state = machine.show(instance)
    assert (state["ActiveState"], state["Result"]) == ("failed", "exit-code")
    assert (state["ExecMainStatus"], state["NRestarts"]) == ("2", "0")
    assert says in machine.journal(instance, since)


CONSOLE_UNIT = REPO / "deploy" / "relay-console.service"


def sign_in_refusal(port: int, role: str) -> tuple[int, str]:
    """Sign in to the console as ``role``, as a browser would (the form's token in its cookie
    and in the form): the status and page it answers."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"http://127.0.0.1:{port}/login", timeout=5) as form:
        assert form.status == 200
        token = re.search(r'name="token" value="([^"]+)"', form.read().decode())
    assert token, "no sign-in form"
    data = urllib.parse.urlencode({"token": token[1], "role": role, "password": "anything"})
    try:
        opener.open(f"http://127.0.0.1:{port}/login", data=data.encode(), timeout=10)
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()
    raise AssertionError("signed in with any password")


def test_the_console_serves_on_the_loopback_and_stops_cleanly(deployed: Deployment) -> None:
    """deploy/relay-console.service beside the relay, with its settings from the relay's
    environment file: started, it answers its sign-in page on 127.0.0.1 and reaches the
    database the file names (as the role signing in: the shared test server trusts it, which
    the console refuses, saying so); stopped, it exits 0."""
    machine = deployed.machine
    port = free_port()
    unit = CONSOLE_UNIT.read_text()
    for key, value in HARDENING.items():
        assert f"\n{key}={value}\n" in unit, key
    machine.sh(
        f"""
        cd {REPO}
        install -m 0644 deploy/relay-console.service /etc/systemd/system/relay-console.service
        echo 'RELAY_CONSOLE_LISTEN=127.0.0.1:{port}' >> /etc/relay/relay.env
        systemctl daemon-reload
        systemctl start relay-console
        """
    )
    try:
        state = machine.show("relay-console")
        # Type=notify: start returned once it said READY=1, listening.
        assert (state["ActiveState"], state["SubState"]) == ("active", "running")
        assert state["StatusText"] == f"listening on http://127.0.0.1:{port}"
        assert {key: state[key] for key in HARDENING} == HARDENING
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as page:
            assert page.status == 200 and "Sign in" in page.read().decode()
            assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        status, text = sign_in_refusal(port, deployed.role)
        assert status == 403 and "did not ask for role" in text, text

        started = time.monotonic()
        stopped = machine.sh("systemctl stop relay-console", check=False)
        assert stopped.returncode == 0 and time.monotonic() - started < 10
        state = machine.show("relay-console")
        assert (state["ActiveState"], state["Result"]) == ("inactive", "success")
        assert state["ExecMainStatus"] == "0"
    finally:
        machine.sh(
            "systemctl stop relay-console; sed -i '/^RELAY_CONSOLE_LISTEN=/d' /etc/relay/relay.env"
        )
