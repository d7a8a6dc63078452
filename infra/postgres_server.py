"""A local PostgreSQL server for development and tests, run from the distribution's binaries.

It listens on 127.0.0.1:settings.port only, keeps its unix socket inside its data folder, and
TRUSTS every local connection (no passwords): it is a throw-away dev/test server, never a
deployment. Deployments set ``TAPSTREAM_POSTGRES__DSN`` and Tapstream starts nothing.

PostgreSQL refuses to run as root, so as root the binaries run as the ``postgres`` user
(created by the Debian package), else as a system user ``tapstream-pg`` created on demand.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from infra import proc
from tapstream.errors import StackError
from tapstream.settings import PostgresSettings

logger = logging.getLogger(__name__)

SUPERUSER = "postgres"
FALLBACK_OS_USER = "tapstream-pg"
INSTALL_HINT = "install it with `apt-get install -y postgresql` (or run infra/bootstrap.sh)"
SOCKET_PATH_MAX = 107  # sun_path limit on Linux, including the socket file name


def candidate_bin_dirs() -> list[Path]:
    """Folders holding initdb and pg_ctl: PATH first, then /usr/lib/postgresql/<major>/bin, newest first."""
    found: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        found.append(Path(on_path).resolve().parent)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    found.extend(debian)
    return [d for d in dict.fromkeys(found) if (d / "initdb").exists() and (d / "pg_ctl").exists()]


def bin_major(bin_dir: Path) -> str:
    """The major version of the binaries in ``bin_dir`` ("15")."""
    out = subprocess.run([str(bin_dir / "pg_ctl"), "--version"], capture_output=True, text=True).stdout
    found = re.search(r"(\d+)", out)
    return found.group(1) if found else "?"


def sql_string(text: str) -> str:
    """``text`` as a single-quoted postgresql.conf string."""
    return "'" + text.replace("'", "''") + "'"


class PostgresServer:
    """One PostgreSQL cluster in ``data_dir`` logging to ``log_file``."""

    def __init__(self, settings: PostgresSettings, data_dir: Path, log_file: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.log_file = log_file
        self._bin_dir: Path | None = None

    @property
    def dsn(self) -> str:
        """DSN of the application role (no password: the server trusts local connections)."""
        return self.settings.effective_dsn()

    def data_version(self) -> str | None:
        """Major version that created the data folder, or None before initdb."""
        marker = self.data_dir / "PG_VERSION"
        return marker.read_text().strip() if marker.exists() else None

    def ensure_installed(self) -> Path:
        """The bin folder to use; StackError naming the package to install if there is none."""
        if self._bin_dir is not None:
            return self._bin_dir
        dirs = candidate_bin_dirs()
        if not dirs:
            raise StackError(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}")
        wanted = self.data_version()
        if wanted is not None:
            dirs = [d for d in dirs if bin_major(d) == wanted]
            if not dirs:
                raise StackError(
                    f"{self.data_dir} was created by PostgreSQL {wanted}, whose binaries are missing: "
                    f"install postgresql-{wanted}, or run `tapstream stack down --wipe`"
                )
        self._bin_dir = dirs[0]
        return self._bin_dir

    def pid(self) -> int | None:
        """Pid of the postmaster if this cluster is running."""
        pid = proc.read_pid(self.data_dir / "postmaster.pid")
        if pid is None or not proc.pid_alive(pid):
            return None
        command = proc.cmdline(pid)
        return pid if not command or "postgres" in command else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def running_port(self) -> int | None:
        """The port in postmaster.pid (4th line) while running."""
        try:
            line = (self.data_dir / "postmaster.pid").read_text().splitlines()[3]
        except (OSError, IndexError):
            return None
        return int(line) if line.strip().isdigit() else None

    def start(self, timeout_s: float = 60) -> None:
        """Start the server (initdb first if new) and make sure the role and database exist."""
        # Two `stack up` at once: the second waits, then finds the server running.
        with proc.locked(self.data_dir.parent / ".start.lock"):
            if not self.is_running():
                self._start(timeout_s)
            elif self.running_port() != self.settings.port:
                raise StackError(
                    f"the local PostgreSQL runs on port {self.running_port()}, settings say "
                    f"{self.settings.port}: run `tapstream stack down` first"
                )
            self._ensure_role_and_database()

    def _start(self, timeout_s: float) -> None:
        if proc.port_open(self.settings.port):
            raise StackError(
                f"port {self.settings.port} is taken by another program (not this PostgreSQL): "
                "free it, or set TAPSTREAM_POSTGRES__PORT"
            )
        bin_dir = self.ensure_installed()
        user = self._os_user()
        if self.data_version() is None:
            self._initdb(bin_dir, user)
        self._write_conf(user)
        self._prepare_log(user)
        done = self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                          "-w", "-t", str(int(timeout_s)), "-s", "start"], user)
        if done.returncode != 0:
            raise StackError(
                f"PostgreSQL did not start: {done.stderr.strip()}\n{proc.tail(self.log_file)}"
            )
        logger.info("started PostgreSQL %s (pid %s) on 127.0.0.1:%d", self.data_version(), self.pid(),
                    self.settings.port)

    def stop(self, timeout_s: float = 30) -> None:
        """Stop the server (fast mode: roll back open transactions, checkpoint, exit)."""
        if not self.is_running():
            return
        logger.info("stopping PostgreSQL (pid %s)", self.pid())
        bin_dir = self.ensure_installed()
        done = self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                          "-t", str(int(timeout_s)), "-s", "stop"], self._os_user())
        if done.returncode != 0 and self.is_running():
            raise StackError(f"PostgreSQL did not stop: {done.stderr.strip()}")

    def _os_user(self) -> str | None:
        """The OS user the server runs as when we are root; None = ourselves."""
        if os.geteuid() != 0:
            return None
        for name in (SUPERUSER, FALLBACK_OS_USER):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        done = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", FALLBACK_OS_USER],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise StackError(f"cannot create the OS user {FALLBACK_OS_USER}: {done.stderr.strip()}")
        return FALLBACK_OS_USER

    def _run(self, cmd: list[str], user: str | None) -> subprocess.CompletedProcess[str]:
        if user is not None:
            cmd = ["runuser", "-u", user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")

    def _give_to(self, path: Path, user: str | None) -> None:
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self, bin_dir: Path, user: str | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self._give_to(self.data_dir, user)
        if user is not None and self._run(["test", "-w", str(self.data_dir)], user).returncode != 0:
            raise StackError(
                f"PostgreSQL runs as the OS user {user}, who cannot reach {self.data_dir} "
                "(a parent folder is private, e.g. /root): set TAPSTREAM_STATE_DIR to a folder "
                "others may traverse"
            )
        logger.info("creating a PostgreSQL %s cluster in %s", bin_major(bin_dir), self.data_dir)
        # --no-sync: a dev/test cluster; skipping the fsync of the fresh files saves seconds.
        done = self._run([str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                          "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"], user)
        if done.returncode != 0:
            raise StackError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# Tapstream's settings, rewritten on every start.\n"
                       "include_if_exists = 'tapstream.conf'\n")

    def _write_conf(self, user: str | None) -> None:
        socket_dir = str(self.data_dir)
        if len(f"{socket_dir}/.s.PGSQL.{self.settings.port}") > SOCKET_PATH_MAX:
            socket_dir = ""  # path too long for a unix socket: TCP only
        conf = self.data_dir / "tapstream.conf"
        conf.write_text(
            "# Written by tapstream (infra/postgres_server.py) on every start; edits are lost.\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.settings.port}\n"
            f"unix_socket_directories = {sql_string(socket_dir)}\n"
        )
        self._give_to(conf, user)

    def _prepare_log(self, user: str | None) -> None:
        # pg_ctl opens the log as the server's user: it must own the file.
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        self._give_to(self.log_file, user)

    def _ensure_role_and_database(self) -> None:
        role, database = self.settings.user, self.settings.database
        try:
            with psycopg.connect(host="127.0.0.1", port=self.settings.port, user=SUPERUSER,
                                 dbname="postgres", autocommit=True, connect_timeout=5) as conn:
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                    conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(role)))
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if exists.fetchone() is None:
                    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(role)))
        except psycopg.Error as err:
            raise StackError(f"cannot prepare role {role} / database {database}: {err}") from err
