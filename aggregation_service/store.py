"""Metadata in SQLite (WAL mode), run on one dedicated thread.

Every method of :class:`Store` is blocking and is called through
:meth:`Store.run`, which hands it to the store's single-thread executor: the
event loop never waits on SQLite or on an fsync, and one connection is used by
one thread only. Ordinary writes use ``synchronous=NORMAL`` (durable against
a process crash; the WAL is fsynced at checkpoints); the publication
transaction — new version + log checkpoint + published idempotency keys —
runs with ``synchronous=FULL`` because it decides which logged updates have
been folded into a version.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from aggregation_service.errors import StorageError

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    live_version INTEGER,
    previous_live INTEGER,
    training_version INTEGER NOT NULL,
    config TEXT NOT NULL,
    checkpoint INTEGER NOT NULL,      -- update-log offset: records before it are in a version
    eval_blob TEXT,
    rounds_abandoned INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,               -- pushed | aggregated
    base_version INTEGER,
    graph_sha256 TEXT NOT NULL,
    manifest TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL,
    optimizer_sha256 TEXT,
    num_updates INTEGER NOT NULL DEFAULT 0,
    num_devices INTEGER NOT NULL DEFAULT 0,
    mean_staleness REAL,
    created_at REAL NOT NULL,
    log_checkpoint INTEGER NOT NULL,
    metrics TEXT,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS enrollment_tokens (
    token_hash TEXT PRIMARY KEY,
    uses_left INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    profile TEXT NOT NULL,
    enrolled_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    assignment_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    round_id TEXT,
    issued_at REAL NOT NULL,
    deadline_at REAL NOT NULL,
    state TEXT NOT NULL               -- open | reported | expired
);
CREATE INDEX IF NOT EXISTS assignments_open ON assignments (model, state);
CREATE TABLE IF NOT EXISTS published_updates (
    idempotency_key TEXT PRIMARY KEY,
    update_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class VersionRow:
    model: str
    version: int
    kind: str
    base_version: int | None
    graph_sha256: str
    manifest: str
    weights_sha256: str
    optimizer_sha256: str | None
    num_updates: int
    num_devices: int
    mean_staleness: float | None
    created_at: float
    log_checkpoint: int
    metrics: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "kind": self.kind,
            "base_version": self.base_version,
            "graph_sha256": self.graph_sha256,
            "weights_sha256": self.weights_sha256,
            "num_updates": self.num_updates,
            "num_devices": self.num_devices,
            "mean_staleness": self.mean_staleness,
            "created_at": self.created_at,
            "metrics": json.loads(self.metrics) if self.metrics else None,
        }


@dataclass(frozen=True)
class ModelRow:
    name: str
    created_at: float
    paused: bool
    live_version: int | None
    previous_live: int | None
    training_version: int
    config: str
    checkpoint: int
    eval_blob: str | None
    rounds_abandoned: int


def _model_row(row: Sequence[Any]) -> ModelRow:
    # SQLite keeps booleans as integers: the row says what the field means.
    name, created_at, paused, *rest = row
    return ModelRow(name, created_at, bool(paused), *rest)


@dataclass(frozen=True)
class Assignment:
    assignment_id: str
    device_id: str
    model: str
    version: int
    round_id: str | None
    issued_at: float
    deadline_at: float
    state: str


@dataclass(frozen=True)
class Publication:
    """Everything one crash-consistent publication writes."""

    version: VersionRow
    checkpoint: int
    published_keys: tuple[tuple[str, str], ...]  # (idempotency key, update id)
    abandoned_round: bool = False
    # The assignments these updates reported on: marked used in the same
    # transaction, so a restart never counts them as outstanding again nor
    # lets one take a second update.
    assignments: tuple[str, ...] = ()


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fedge-db")
        self._conn: sqlite3.Connection | None = None

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    # --- lifecycle (blocking) --------------------------------------------------------

    def open(self) -> None:
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: not a usable SQLite database ({exc})") from exc
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def shutdown(self) -> None:
        self._executor.submit(self.close).result()
        self._executor.shutdown(wait=True)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("store is not open")
        return self._conn

    def _tx(self, body: Callable[[sqlite3.Connection], T], *, full: bool = False) -> T:
        conn = self.conn
        if full:
            conn.execute("PRAGMA synchronous=FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        finally:
            if full:
                conn.execute("PRAGMA synchronous=NORMAL")

    # --- models and versions ---------------------------------------------------------

    def models(self) -> list[ModelRow]:
        rows = self.conn.execute("SELECT * FROM models ORDER BY name").fetchall()
        return [_model_row(r) for r in rows]

    def model(self, name: str) -> ModelRow | None:
        row = self.conn.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
        return _model_row(row) if row else None

    def versions(self, model: str) -> list[VersionRow]:
        rows = self.conn.execute(
            "SELECT * FROM versions WHERE model = ? ORDER BY version", (model,)
        ).fetchall()
        return [VersionRow(*r) for r in rows]

    def version(self, model: str, version: int) -> VersionRow | None:
        row = self.conn.execute(
            "SELECT * FROM versions WHERE model = ? AND version = ?", (model, version)
        ).fetchone()
        return VersionRow(*row) if row else None

    def add_pushed_version(
        self, row: VersionRow, *, config: str, now: float, checkpoint: int
    ) -> None:
        """A pushed version starts a new lineage: training moves to it and the
        buffer of the previous lineage is dropped (the checkpoint moves past it)."""

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO models (name, created_at, training_version, config, checkpoint) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "training_version = excluded.training_version, checkpoint = excluded.checkpoint",
                (row.model, now, row.version, config, checkpoint),
            )
            self._insert_version(conn, row)

        self._tx(body, full=True)

    @staticmethod
    def _insert_version(conn: sqlite3.Connection, row: VersionRow) -> None:
        conn.execute(
            "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.model,
                row.version,
                row.kind,
                row.base_version,
                row.graph_sha256,
                row.manifest,
                row.weights_sha256,
                row.optimizer_sha256,
                row.num_updates,
                row.num_devices,
                row.mean_staleness,
                row.created_at,
                row.log_checkpoint,
                row.metrics,
            ),
        )

    def publish(self, pub: Publication) -> None:
        """One transaction: the new version (or an abandoned round), the model's
        log checkpoint, the idempotency keys folded into it and their
        assignments marked reported."""

        def body(conn: sqlite3.Connection) -> None:
            model = pub.version.model
            if pub.abandoned_round:
                conn.execute(
                    "UPDATE models SET checkpoint = ?, rounds_abandoned = rounds_abandoned + 1 "
                    "WHERE name = ?",
                    (pub.checkpoint, model),
                )
            else:
                self._insert_version(conn, pub.version)
                conn.execute(
                    "UPDATE models SET training_version = ?, checkpoint = ? WHERE name = ?",
                    (pub.version.version, pub.checkpoint, model),
                )
            conn.executemany(
                "INSERT OR IGNORE INTO published_updates VALUES (?, ?, ?, ?)",
                [(key, uid, model, pub.version.version) for key, uid in pub.published_keys],
            )
            conn.executemany(
                "UPDATE assignments SET state = 'reported' WHERE assignment_id = ?",
                [(a,) for a in pub.assignments],
            )

        self._tx(body, full=True)

    def set_model_fields(self, name: str, **fields: Any) -> None:
        allowed = {
            "paused",
            "live_version",
            "previous_live",
            "training_version",
            "config",
            "checkpoint",
            "eval_blob",
        }
        if not fields or set(fields) - allowed:
            raise ValueError(f"cannot set {sorted(set(fields) - allowed)}")
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self._tx(
            lambda conn: conn.execute(
                f"UPDATE models SET {assignments} WHERE name = ?", (*fields.values(), name)
            ),
            full=True,
        )

    def set_metrics(self, model: str, version: int, metrics: Mapping[str, Any]) -> None:
        self.conn.execute(
            "UPDATE versions SET metrics = ? WHERE model = ? AND version = ?",
            (json.dumps(dict(metrics)), model, version),
        )

    def published_key(self, key: str) -> str | None:
        row = self.conn.execute(
            "SELECT update_id FROM published_updates WHERE idempotency_key = ?", (key,)
        ).fetchone()
        return str(row[0]) if row else None

    def lineage_stats(self, model: str) -> tuple[int, int]:
        """(updates folded into versions, distinct devices) — devices from assignments."""
        n = self.conn.execute(
            "SELECT COALESCE(SUM(num_updates), 0) FROM versions WHERE model = ?", (model,)
        ).fetchone()[0]
        d = self.conn.execute(
            "SELECT COUNT(DISTINCT device_id) FROM assignments "
            "WHERE model = ? AND state = 'reported'",
            (model,),
        ).fetchone()[0]
        return int(n), int(d)

    # --- enrollment and devices ------------------------------------------------------

    def add_enrollment_token(
        self, token_hash: str, uses: int, expires_at: float, now: float
    ) -> None:
        self.conn.execute(
            "INSERT INTO enrollment_tokens VALUES (?, ?, ?, ?)", (token_hash, uses, expires_at, now)
        )

    def enroll(
        self, token_hash: str, device_id: str, device_token_hash: str, profile: str, now: float
    ) -> bool:
        """Spend one use of the enrollment token and create the device; False if
        the token is unknown, used up or expired."""

        def body(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT uses_left, expires_at FROM enrollment_tokens WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None or row[0] < 1 or row[1] < now:
                return False
            conn.execute(
                "UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE token_hash = ?",
                (token_hash,),
            )
            conn.execute(
                "INSERT INTO devices VALUES (?, ?, ?, ?, ?, 'enrolled')",
                (device_id, device_token_hash, profile, now, now),
            )
            return True

        return self._tx(body)

    def enrollment_token_usable(self, token_hash: str, now: float) -> bool:
        """True if the token exists, has a use left and has not expired (nothing is spent)."""
        row = self.conn.execute(
            "SELECT uses_left, expires_at FROM enrollment_tokens WHERE token_hash = ?",
            (token_hash,),
        ).fetchone()
        return row is not None and row[0] >= 1 and row[1] >= now

    def device_by_token(self, token_hash: str) -> str | None:
        row = self.conn.execute(
            "SELECT device_id FROM devices WHERE token_hash = ? AND state != 'revoked'",
            (token_hash,),
        ).fetchone()
        return str(row[0]) if row else None

    def touch_devices(self, seen: Sequence[tuple[str, str, float]]) -> None:
        """(device_id, state, last_seen) of many check-ins in one transaction;
        a device revoked meanwhile stays revoked."""
        self._tx(lambda conn: conn.executemany(
            "UPDATE devices SET state = ?, last_seen = ? WHERE device_id = ? "
            "AND state != 'revoked'",
            [(state, now, device_id) for device_id, state, now in seen],
        ))

    def revoke_device(self, device_id: str) -> list[str] | None:
        """Revoke a device's token and expire its open assignments (their ids);
        None if there is no such device. Revoking twice is not an error."""

        def body(conn: sqlite3.Connection) -> list[str] | None:
            if conn.execute(
                "SELECT 1 FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone() is None:
                return None
            conn.execute("UPDATE devices SET state = 'revoked' WHERE device_id = ?", (device_id,))
            ids = [
                str(r[0])
                for r in conn.execute(
                    "SELECT assignment_id FROM assignments WHERE device_id = ? AND state = 'open'",
                    (device_id,),
                )
            ]
            conn.execute(
                "UPDATE assignments SET state = 'expired' WHERE device_id = ? AND state = 'open'",
                (device_id,),
            )
            return ids

        return self._tx(body)

    def list_devices(self, limit: int, state: str | None) -> list[dict[str, Any]]:
        where, args = ("WHERE state = ?", (state,)) if state else ("", ())
        rows = self.conn.execute(
            "SELECT device_id, profile, state, enrolled_at, last_seen FROM devices "
            f"{where} ORDER BY enrolled_at LIMIT ?",
            (*args, limit),
        ).fetchall()
        out = []
        for device_id, profile, state_, enrolled_at, last_seen in rows:
            try:
                parsed = json.loads(profile)
            except json.JSONDecodeError:
                parsed = {}
            out.append(
                {
                    "device_id": device_id,
                    "profile": parsed if isinstance(parsed, dict) else {},
                    "state": state_,
                    "enrolled_at": enrolled_at,
                    "last_seen": last_seen,
                }
            )
        return out

    def devices_by_state(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT state, COUNT(*) FROM devices GROUP BY state").fetchall()
        return {str(s): int(n) for s, n in rows}

    # --- assignments -----------------------------------------------------------------

    def add_assignment(self, a: Assignment) -> None:
        self.conn.execute(
            "INSERT INTO assignments VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                a.assignment_id,
                a.device_id,
                a.model,
                a.version,
                a.round_id,
                a.issued_at,
                a.deadline_at,
                a.state,
            ),
        )

    def assignment(self, assignment_id: str) -> Assignment | None:
        row = self.conn.execute(
            "SELECT * FROM assignments WHERE assignment_id = ?", (assignment_id,)
        ).fetchone()
        return Assignment(*row) if row else None

    def mark_reported(self, assignment_ids: Iterable[str]) -> None:
        self.conn.executemany(
            "UPDATE assignments SET state = 'reported' WHERE assignment_id = ?",
            [(a,) for a in assignment_ids],
        )

    def expire_assignments(self, now: float) -> int:
        cur = self.conn.execute(
            "UPDATE assignments SET state = 'expired' WHERE state = 'open' AND deadline_at < ?",
            (now,),
        )
        return int(cur.rowcount)

    def open_assignments(self, model: str, now: float) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM assignments WHERE model = ? AND state = 'open' "
            "AND deadline_at >= ?",
            (model, now),
        ).fetchone()
        return int(row[0])
