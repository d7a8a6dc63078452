"""Process plumbing for the local services: detached start, liveness, stop, ports, file locks.

Linux-first (``/proc`` for zombies and RSS); elsewhere the checks degrade to ``kill(pid, 0)``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tapstream.errors import StackError

# The shell forks the service into the background and exits at once, so the service is
# re-parented to init: no Popen object outlives the call (no zombie, no ResourceWarning) and
# the service survives the command that started it. Its new session keeps a terminal's
# Ctrl-C away from it.
_DETACH = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'


def spawn_detached(argv: list[str], log_file: Path, cwd: Path) -> int:
    """Start ``argv`` in its own session with stdout/stderr appended to ``log_file``; its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["/bin/sh", "-c", _DETACH, "sh", str(log_file), *argv],
        cwd=cwd, capture_output=True, text=True, start_new_session=True, check=False,
    )
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise StackError(f"could not start {argv[0]}: {done.stderr.strip() or done.stdout.strip()}")
    return int(done.stdout.strip())


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # our own child that just exited; now reaped
    stat = Path(f"/proc/{pid}/stat")
    try:
        # The state follows the parenthesised command name, which may contain spaces.
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def cmdline(pid: int) -> str:
    """The command line of ``pid`` (space-joined), or "" when unknown."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(path: Path) -> int | None:
    """The pid on the first line of ``path``, or None."""
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (Linux), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM ``pid``, wait up to ``timeout_s`` seconds for it to exit, then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_until(lambda: not pid_alive(pid), timeout_s):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not wait_until(lambda: not pid_alive(pid), 10.0):
        raise StackError(f"process {pid} survived SIGKILL")


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.25) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Call ``check`` until it returns True or ``timeout_s`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def tail(path: Path, lines: int = 15, start: int = 0) -> str:
    """The last ``lines`` lines of a text file from byte ``start`` on, for error messages
    ("" if unreadable)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(start, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def flock_held(path: Path) -> bool:
    """True if another process holds a flock on ``path`` (probes with a non-blocking lock)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        fcntl.flock(f, fcntl.LOCK_UN)
        return False
