"""One writer per stage folder: a lease object with a heartbeat, on the storage itself.

A run that is about to write a stage folder takes ``_LEASE.json`` in it and rewrites it every
``HEARTBEAT_S`` seconds from a background thread. A second run on the same folder refuses while
the lease is alive, naming its holder; a lease whose holder is gone (no heartbeat for
``STALE_S`` seconds, or a process on this host that no longer exists) is taken over, so a
killed run never blocks the next one for long. It lives next to the data, so it works the same
on a local disk and on object storage. Object stores have no compare-and-swap here, so taking
a lease is write, settle, read back: two runs starting within the same moment are told apart
by who wrote last, which is a best effort, not a lock.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any

from zeroseg import storage

LEASE = "_LEASE.json"
HEARTBEAT_S = float(os.environ.get("ZEROSEG_LEASE_HEARTBEAT_S", "10"))
STALE_S = float(os.environ.get("ZEROSEG_LEASE_STALE_S", "60"))
SETTLE_S = 0.2  # between writing a lease and reading it back


class StageBusy(RuntimeError):
    """Another live run holds the stage folder's lease."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def holder_gone(lease: dict[str, Any], now: float | None = None) -> str | None:
    """Why the holder of ``lease`` is gone (None while it is alive)."""
    age = (now if now is not None else time.time()) - float(lease.get("heartbeat_unix", 0))
    if age > float(lease.get("stale_s", STALE_S)):
        return f"no heartbeat for {age:.0f} s"
    if lease.get("host") == socket.gethostname() and not _pid_alive(int(lease.get("pid", 0))):
        return f"process {lease.get('pid')} on this host has exited"
    return None


class Lease:
    """The lease of one stage folder; use as a context manager around the stage's writes."""

    def __init__(self, stage_uri: str, what: str, log=print):
        self.stage_uri, self.uri = stage_uri, storage.join(stage_uri, LEASE)
        self.what, self.log = what, log
        self.record = {
            "owner": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "stage": what,
            "started_unix": time.time(),
            "stale_s": STALE_S,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        try:
            return storage.read_json(self.uri)
        except FileNotFoundError:
            return None
        except ValueError:  # half-written by a writer that died: nobody holds it
            return None

    def _write(self) -> None:
        storage.write_json(self.uri, {**self.record, "heartbeat_unix": time.time()})

    def acquire(self) -> None:
        held = self._read()
        if held and held.get("owner") != self.record["owner"]:
            gone = holder_gone(held)
            if gone is None:
                raise StageBusy(self._busy_message(held))
            self.log(
                f"[{self.what}] taking over the lease of a run that is gone "
                f"(host {held.get('host')}, pid {held.get('pid')}: {gone})"
            )
        self._write()
        time.sleep(SETTLE_S)
        held = self._read()
        if held and held.get("owner") != self.record["owner"]:
            raise StageBusy(self._busy_message(held))
        self._thread = threading.Thread(target=self._beat, name="zeroseg-lease", daemon=True)
        self._thread.start()

    def _busy_message(self, held: dict[str, Any]) -> str:
        age = time.time() - float(held.get("heartbeat_unix", 0))
        return (
            f"another run is writing {self.stage_uri}: host {held.get('host')}, "
            f"pid {held.get('pid')}, last heartbeat {age:.0f} s ago. Wait for it to finish "
            f"(`zeroseg status` shows its progress) or stop it; a lease without a heartbeat "
            f"for {held.get('stale_s', STALE_S):.0f} s is taken over"
        )

    def renew(self) -> None:
        """Write the lease again now (after the folder was cleared under it)."""
        self._write()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except Exception:  # a missed heartbeat is retried at the next one
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S + 5)
        held = self._read()
        if held and held.get("owner") == self.record["owner"]:
            storage.remove(self.uri, recursive=False)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
