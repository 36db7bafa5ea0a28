"""Kernel records in an embedded SQLite database, so kernels can outlive the gateway.

A record holds what a new gateway process needs to reattach to a running
kernel: its id, owner, kernelspec, connection info (ports and the signing
key -- hence the file is created 0600), how it was started (pid, process
start time, provisioner info, environment) and its timestamps.  All database
work runs on one dedicated thread, so the reactor never waits for the disk.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field, fields

from twisted.application.service import Service
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

SCHEMA = """
CREATE TABLE IF NOT EXISTS kernels (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL
)
"""


@dataclass
class KernelRecord:
    id: str
    name: str
    owner: str | None
    connection_info: dict
    pid: int | None = None
    start_time: int | None = None
    provisioner_info: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    language: str = ""
    created: str = ""
    last_activity: str = ""
    stderr_inode: int | None = None  # the pipe jkg reads the kernel's stderr from (see kernels.stderr)

    def to_json(self) -> str:
        # signing keys (and whatever provisioners report) may be bytes
        return json.dumps(asdict(self), default=lambda value: value.decode("utf-8", "replace")
                          if isinstance(value, bytes) else str(value))

    @classmethod
    def from_json(cls, text: str) -> "KernelRecord":
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in json.loads(text).items() if key in known})


class KernelStore(Service):
    """Save, delete and load :class:`KernelRecord` objects off the reactor thread.

    A Twisted ``Service``: its one database thread runs while it is started;
    stopping it closes the database, ends the thread and releases the lock
    taken by :func:`open_store` (another gateway may then take over).  The
    registry starts it and stops it last, after the kernels' final records.

    :param lock_fd: the open lock file (locked with ``flock``), held while the store lives.
    """

    name = "state-db"

    def __init__(self, path: str, reactor, lock_fd: int | None = None):
        self.path = path
        self.lock_fd = lock_fd
        self._reactor = reactor
        self._pool = ThreadPool(1, 1, name="jkg-state-db")
        self._connection: sqlite3.Connection | None = None

    def startService(self) -> None:  # noqa: N802 - Twisted API
        super().startService()
        self._pool.start()

    @inlineCallbacks
    def stopService(self):  # noqa: N802 - Twisted API
        super().stopService()
        if self._pool.started:
            yield self.close()
            self._pool.stop()
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # releases the flock: another gateway may take over
            self.lock_fd = None

    def _run(self, function, *args):
        return deferToThreadPool(self._reactor, self._pool, function, *args)

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            folder = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(folder, mode=0o700, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(self.path, 0o600)  # it holds signing keys
            self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute(SCHEMA)
        return self._connection

    def save(self, record: KernelRecord):
        return self._run(self._save, record.id, record.to_json())

    def _save(self, kernel_id: str, text: str) -> None:
        self._db().execute("INSERT OR REPLACE INTO kernels (id, record) VALUES (?, ?)", (kernel_id, text))

    def delete(self, kernel_id: str):
        return self._run(self._delete, kernel_id)

    def _delete(self, kernel_id: str) -> None:
        self._db().execute("DELETE FROM kernels WHERE id = ?", (kernel_id,))

    def load_all(self):
        """Fire with every stored :class:`KernelRecord`."""
        return self._run(self._load_all)

    def _load_all(self) -> list[KernelRecord]:
        rows = self._db().execute("SELECT record FROM kernels").fetchall()
        records = []
        for (text,) in rows:
            try:
                records.append(KernelRecord.from_json(text))
            except (ValueError, TypeError):
                continue  # a record from an incompatible version: ignore it
        return records

    def close(self):
        def close_connection():
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        return self._run(close_connection)


class StateDatabaseInUse(RuntimeError):
    """Another live gateway uses the same state database."""


def default_state_path() -> str:
    from jupyter_core.paths import jupyter_runtime_dir

    return os.path.join(jupyter_runtime_dir(), "jkg-state.sqlite")


def open_store(setting: str, reactor) -> KernelStore | None:
    """The store for ``--state-db`` (``""`` = default path, ``none`` = off), locked for this process.

    Two gateways sharing one database would adopt each other's kernels, so
    the second one is refused at startup with a clear message.
    """
    if setting.strip().lower() == "none":
        return None
    path = setting or default_state_path()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    lock = os.open(path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise StateDatabaseInUse(f"state database {path} is in use by another jkg; "
                                 "give this one its own --state-db (or --state-db none)") from None
    return KernelStore(path, reactor, lock_fd=lock)  # the lock is held for the life of the store
