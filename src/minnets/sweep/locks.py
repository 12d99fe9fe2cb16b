"""Job locks that work on shared cluster filesystems and recover from holders that died.

A lock is a small JSON file (``ROOT/.locks/<job>.lock``) naming its holder: host, pid, the
process's start time (to tell a reused pid from the holder) and a random token. It is
created with ``O_CREAT | O_EXCL``, which is atomic on local filesystems and on NFSv3+, Lustre
and GPFS, unlike ``flock``, which NFS does not reliably share between hosts. The holder
refreshes the file's mtime every :data:`HEARTBEAT_SECONDS` while it works.

A lock is stale when its holder is on this host and its process is gone (or its pid now
belongs to another process), or, for a holder on another host, when its heartbeat is older
than the stale timeout (default :data:`STALE_SECONDS`; hosts' clocks are assumed to agree to
well within that, as NTP keeps them on a cluster). A stale lock is broken under a second,
short-lived guard file (``<job>.lock.break``), created the same atomic way: the breaker
re-reads the lock under the guard and removes it only if it still carries the stale token,
then competes for the lock like everyone else. So two sweeps that both find a lock stale
never both take it. (The guard itself is recovered by the same rules, with
:data:`GUARD_STALE_SECONDS` as its timeout; only a breaker killed in the microseconds between
creating and removing the guard leaves one behind.)
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["HEARTBEAT_SECONDS", "STALE_SECONDS", "Holder", "JobLock", "process_alive"]

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0
GUARD_STALE_SECONDS = 60.0


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/PID/stat (Linux): state first, start time at index 19."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to detect reused pids."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs (not a zombie) and, if ``start`` is given, is the same process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    fields = _proc_stat(pid)
    if fields is None:  # no /proc: trust kill(0)
        return True
    # A zombie (its parent, e.g. a container's init, does not reap it) holds nothing any more.
    return fields[0] not in ("Z", "X") and (start is None or fields[19] == start)


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its file says."""

    host: str
    pid: int
    start: str | None
    token: str
    acquired: str

    def describe(self) -> str:
        return f"{self.host} pid {self.pid} since {self.acquired}"


def _me() -> Holder:
    return Holder(host=socket.gethostname(), pid=os.getpid(), start=_start_time(os.getpid()),
                  token=uuid.uuid4().hex, acquired=time.strftime("%Y-%m-%d %H:%M:%S"))


def _read(path: Path) -> tuple[Holder | None, float] | None:
    """(holder or None if unreadable, age of the heartbeat in s), or None if there is no file."""
    try:
        age = time.time() - path.stat().st_mtime
        data = json.loads(path.read_text())
        return Holder(str(data["host"]), int(data["pid"]), data.get("start"), str(data["token"]),
                      str(data.get("acquired", "?"))), age
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):  # being written, or damaged
        try:
            return None, time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None


def _stale(holder: Holder | None, age: float, timeout: float) -> bool:
    if holder is not None and holder.host == socket.gethostname():
        return not process_alive(holder.pid, holder.start)
    return age > timeout


def _create(path: Path, holder: Holder) -> bool:
    """Create ``path`` holding ``holder`` if it does not exist (atomically); False if it does."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(holder), handle)
    return True


def _remove_if(path: Path, token: str | None) -> None:
    """Remove ``path`` if it (still) carries ``token`` (``None``: if it is still unreadable)."""
    found = _read(path)
    if found is not None and (found[0].token if found[0] else None) == token:
        path.unlink(missing_ok=True)


class JobLock:
    """An exclusive, non-blocking lock on one job, shared by every sweep on every host."""

    def __init__(self, path: str | Path, stale_seconds: float = STALE_SECONDS) -> None:
        self.path = Path(path)
        self.stale_seconds = stale_seconds
        self.blocked_by: Holder | None = None  # the live holder seen by the last failed try_acquire
        self._me: Holder | None = None

    @property
    def held(self) -> bool:
        return self._me is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free or stale; False (``blocked_by`` set) if someone live holds it."""
        if self._me is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = _me()
        for _ in range(5):
            if _create(self.path, me):
                self._me, self.blocked_by = me, None
                return True
            found = _read(self.path)
            if found is None:
                continue  # released meanwhile: try again
            holder, age = found
            if not _stale(holder, age, self.stale_seconds):
                self.blocked_by = holder
                return False
            self._break(holder.token if holder else None, me)
        self.blocked_by = None
        return False

    def _break(self, stale_token: str | None, me: Holder) -> None:
        guard = self.path.with_name(self.path.name + ".break")
        if not _create(guard, me):
            found = _read(guard)
            if found is not None and _stale(found[0], found[1], GUARD_STALE_SECONDS):
                _remove_if(guard, found[0].token if found[0] else None)
            return
        try:
            _remove_if(self.path, stale_token)
        finally:
            guard.unlink(missing_ok=True)

    def refresh(self) -> bool:
        """Heartbeat: touch the lock; False if it is no longer ours (taken over as stale)."""
        if self._me is None:
            return False
        found = _read(self.path)
        if found is None or found[0] is None or found[0].token != self._me.token:
            return False
        try:
            os.utime(self.path)
        except FileNotFoundError:
            return False
        return True

    def release(self) -> None:
        """Remove the lock if it is still ours (never someone else's)."""
        if self._me is not None:
            _remove_if(self.path, self._me.token)
            self._me = None

    def holder(self) -> Holder | None:
        """The live holder, or None if the lock is free or stale (informational: may change any time)."""
        found = _read(self.path)
        if found is None or _stale(found[0], found[1], self.stale_seconds):
            return None
        return found[0]
