"""Finding a PostgreSQL to talk to, or starting a throwaway one.

The tests and ``relay demo`` need a real server. In order they use: an explicit DSN, a server
on 127.0.0.1:5432 that lets the ``postgres`` role in, or a private cluster started here from the
server binaries on the machine (as a non-root OS user when we are root, since PostgreSQL refuses
to run as root). When none of that works, :class:`NoPostgres` says what is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql
from psycopg.conninfo import make_conninfo

from relay.db import DatabaseUnavailable, connect

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


class NoPostgres(RuntimeError):
    """No usable PostgreSQL: the message names what to install or set."""


def _reachable(dsn: str) -> bool:
    try:
        with connect(make_conninfo(dsn, connect_timeout=3)):
            return True
    except DatabaseUnavailable:
        return False


def find_server_binaries() -> Path | None:
    """A folder holding both ``initdb`` and ``pg_ctl``: PATH first, then Debian's layout."""
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).parent / "pg_ctl").exists():
        return Path(initdb).parent
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for folder in debian:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


@dataclass
class TempCluster:
    """A private cluster in a temporary folder, trust auth, listening on 127.0.0.1 only."""

    bin_dir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="relay-pg-")))
    port: int = 0
    settings: dict[str, str] = field(default_factory=dict)
    """Server settings (postgresql.conf names) beyond the defaults, for tests that need them."""
    _run_as: pwd.struct_passwd | None = None

    @property
    def dsn(self) -> str:
        """The ``postgres`` superuser's URI on 127.0.0.1 (trust auth: no password); meaningful once
        :meth:`start` has chosen the port."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> TempCluster:
        """Create the cluster and start it on a free port, as an unprivileged OS user when run as
        root. Returns the cluster; raises NoPostgres with the tool's own words when initdb or
        pg_ctl fails."""
        if os.geteuid() == 0:
            self._run_as = _unprivileged_user()
            os.chmod(self.root, 0o755)
            os.chown(self.root, self._run_as.pw_uid, self._run_as.pw_gid)
        self.port = _free_port()
        data = self.root / "data"
        self._run(
            "initdb",
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        self._start_server()
        return self

    def _start_server(self) -> None:
        extra = "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run(
            "pg_ctl",
            "-D",
            str(self.root / "data"),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off{extra}",
            "start",
        )

    def reload(self) -> None:
        """Re-read pg_hba.conf and postgresql.conf, after a test edited them."""
        self._run("pg_ctl", "-D", str(self.root / "data"), "reload")

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop the server as an operator would (fast shutdown: every connection is cut), stay
        down for ``down_seconds``, then start it again on the same port. For tests of what
        survives a database restart."""
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        time.sleep(down_seconds)
        self._start_server()

    def stop(self) -> None:
        """Stop the server at once (immediate shutdown, connections cut) and delete its folder:
        nothing of the cluster is left."""
        if (self.root / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        user = self._run_as
        result = subprocess.run(
            [str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            cwd=self.root,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            check=False,
        )
        if result.returncode != 0:
            raise NoPostgres(
                f"{tool} failed while starting a throwaway PostgreSQL: "
                f"{(result.stderr or result.stdout).strip()}"
            )


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise NoPostgres(
        "running as root and found neither a 'postgres' nor a 'nobody' user to run "
        "a throwaway PostgreSQL as; set RELAY_TEST_DSN instead"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_temp_cluster(**settings: str) -> TempCluster:
    """A started :class:`TempCluster`, ``settings`` being postgresql.conf values; the caller stops
    it. Raises NoPostgres when this machine has no server binaries."""
    bin_dir = find_server_binaries()
    if bin_dir is None:
        raise NoPostgres(
            "no PostgreSQL reachable at 127.0.0.1:5432 and no server binaries (initdb, pg_ctl) "
            "to start one: install them (apt-get install postgresql) or set RELAY_TEST_DSN"
        )
    return TempCluster(bin_dir, settings=settings).start()


@contextmanager
def postgres_server(explicit_dsn: str | None = None) -> Iterator[str]:
    """A DSN for a server we may create databases on, for as long as the block runs."""
    if explicit_dsn:
        if not _reachable(explicit_dsn):
            raise NoPostgres(f"cannot connect to {explicit_dsn}")
        yield explicit_dsn
        return
    if _reachable(LOCAL_DSN):
        yield LOCAL_DSN
        return
    cluster = start_temp_cluster()
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


@contextmanager
def scratch_database(server_dsn: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database on the server (a copy of database ``template`` when given), dropped
    (whoever is still connected) when the block ends."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create = sql.SQL("{} TEMPLATE {}").format(create, sql.Identifier(template))
    with connect(server_dsn) as admin:
        admin.execute(create)
    try:
        yield make_conninfo(server_dsn, dbname=name)
    finally:
        with connect(server_dsn) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
