"""Run store: the run's SQLite database (runs, evaluations, Pareto front, hypervolume).

Every write is one transaction, the journal is WAL (a killed run loses at most the write in
flight, and readers such as the report never block the search), and a reopened store picks
up where it stopped: `open_run` with an existing name resumes that run, `load_archive`
rebuilds its Pareto archive from the stored evaluations.

Evaluations are keyed by (plan key, context): the plan's canonical SHA-256 and a key of
everything else that changes the figures (model, data, device, probe settings; see
`RunConfig.evaluation_context`). `lookup` returns the earlier successful Evaluation so an
identical plan is never applied twice. Failed evaluations are stored too (one row per
attempt, with the error) but are not cache hits, so a transient fault (a probe that was down)
does not condemn a plan forever.

The HAL's measurement cache keeps its own ``hal_*`` tables in the same file; this module
never touches them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .evaluation import Evaluation
from .pareto import ParetoArchive

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    config_json TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'running',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    plan_key TEXT NOT NULL,
    context TEXT NOT NULL DEFAULT '',
    plan_json TEXT NOT NULL,
    evaluation_json TEXT NOT NULL,
    accuracy REAL, latency_ms REAL, energy_mj REAL, model_bytes INTEGER,
    reward REAL,
    error TEXT,
    wall_s REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS evaluations_ok_key
    ON evaluations(plan_key, context) WHERE error IS NULL;
CREATE INDEX IF NOT EXISTS evaluations_run ON evaluations(run_id, id);
CREATE TABLE IF NOT EXISTS pareto (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    plan_key TEXT NOT NULL,
    accuracy REAL, latency_ms REAL, energy_mj REAL, model_bytes INTEGER,
    PRIMARY KEY (run_id, plan_key)
);
CREATE TABLE IF NOT EXISTS hypervolume (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    n_evaluations INTEGER NOT NULL,
    value REAL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, n_evaluations)
);
"""


class RunStore:
    """The run database.

    :param path: the SQLite file (created with its parent directory if missing)
    :param timeout_s: how long a write waits for another connection's lock (the HAL cache
        and the report share the file)
    """

    def __init__(self, path: str | Path, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection used from the env's thread; the lock covers the callback
            # threads of parallel executors.
            self._conn = sqlite3.connect(self.path, timeout=timeout_s, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the run database {self.path}: {exc}; choose a writable run_dir") from None
        self._lock = threading.RLock()
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._transaction() as cur:
            # executescript would commit on its own; run the statements inside this transaction.
            for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                cur.execute(stmt)
            cur.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        version = int(self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
        if version != SCHEMA_VERSION:
            raise ConfigError(f"run database {self.path} has schema version {version}, this HAD-MC writes {SCHEMA_VERSION}; use a new run_dir")

    # -- plumbing -----------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------------------
    def open_run(self, name: str, config: Mapping[str, Any] | None = None) -> int:
        """Create the run `name`, or resume it when it exists; returns its id."""
        now = time.time()
        cfg = json.dumps(dict(config or {}), sort_keys=True, default=str)
        with self._transaction() as cur:
            row = cur.execute("SELECT id FROM runs WHERE name=?", (name,)).fetchone()
            if row is not None:
                cur.execute("UPDATE runs SET status='running', updated=? WHERE id=?", (now, row["id"]))
                log.info("resuming run %s (id %d) in %s", name, row["id"], self.path)
                return int(row["id"])
            cur.execute(
                "INSERT INTO runs(name, config_json, status, created, updated) VALUES (?, ?, 'running', ?, ?)",
                (name, cfg, now, now),
            )
            return int(cur.lastrowid)

    def set_status(self, run_id: int, status: str) -> None:
        with self._transaction() as cur:
            cur.execute("UPDATE runs SET status=?, updated=? WHERE id=?", (status, time.time(), run_id))

    def run_config(self, run_id: int) -> dict[str, Any]:
        row = self._conn.execute("SELECT config_json FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise ConfigError(f"run id {run_id} is not in {self.path}")
        return json.loads(row[0])

    # -- evaluations --------------------------------------------------------------------
    def lookup(self, plan_key: str, context: str = "") -> Evaluation | None:
        """The stored successful evaluation of this plan in this context, if any."""
        with self._lock:
            row = self._conn.execute(
                "SELECT evaluation_json FROM evaluations WHERE plan_key=? AND context=? AND error IS NULL",
                (plan_key, context),
            ).fetchone()
        return None if row is None else Evaluation.model_validate_json(row[0])

    def record(
        self,
        run_id: int,
        evaluation: Evaluation,
        *,
        context: str = "",
        reward: float | None = None,
        archive: ParetoArchive | None = None,
    ) -> bool:
        """Write one evaluation and, in the same transaction, the updated Pareto front.

        A successful evaluation of a plan already stored in this context is not written again
        (returns False); failed attempts each get a row. When `archive` is given, the
        evaluation is offered to it and the run's front and hypervolume rows follow it.
        """
        now = time.time()
        with self._transaction() as cur:
            if evaluation.ok and cur.execute(
                "SELECT 1 FROM evaluations WHERE plan_key=? AND context=? AND error IS NULL", (evaluation.plan_key, context)
            ).fetchone():
                return False
            cur.execute(
                "INSERT INTO evaluations(run_id, plan_key, context, plan_json, evaluation_json, accuracy, latency_ms,"
                " energy_mj, model_bytes, reward, error, wall_s, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    evaluation.plan_key,
                    context,
                    json.dumps(evaluation.plan, sort_keys=True),
                    evaluation.model_dump_json(),
                    evaluation.accuracy,
                    evaluation.latency_ms,
                    evaluation.energy_mj,
                    evaluation.model_bytes,
                    reward,
                    evaluation.error,
                    evaluation.wall_s,
                    now,
                ),
            )
            if archive is not None and archive.add_evaluation(evaluation):
                self._write_front(cur, run_id, archive, now)
            cur.execute("UPDATE runs SET updated=? WHERE id=?", (now, run_id))
        return True

    def _write_front(self, cur: sqlite3.Cursor, run_id: int, archive: ParetoArchive, now: float) -> None:
        cur.execute("DELETE FROM pareto WHERE run_id=?", (run_id,))
        cur.executemany(
            "INSERT INTO pareto(run_id, plan_key, accuracy, latency_ms, energy_mj, model_bytes) VALUES (?,?,?,?,?,?)",
            [
                (run_id, p.plan_key, p.values.get("accuracy"), p.values.get("latency_ms"), p.values.get("energy_mj"),
                 None if p.values.get("model_bytes") is None else int(p.values["model_bytes"]))
                for p in archive.points
            ],
        )
        n = cur.execute("SELECT COUNT(*) FROM evaluations WHERE run_id=? AND error IS NULL", (run_id,)).fetchone()[0]
        cur.execute(
            "INSERT OR REPLACE INTO hypervolume(run_id, n_evaluations, value, created) VALUES (?,?,?,?)",
            (run_id, n, archive.hypervolume(), now),
        )

    def evaluations(self, run_id: int | None = None, *, include_errors: bool = True) -> list[Evaluation]:
        """Stored evaluations in arrival order (all runs when `run_id` is None)."""
        sql = "SELECT evaluation_json FROM evaluations"
        cond, args = [], []
        if run_id is not None:
            cond.append("run_id=?")
            args.append(run_id)
        if not include_errors:
            cond.append("error IS NULL")
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY id", args).fetchall()
        return [Evaluation.model_validate_json(r[0]) for r in rows]

    def errors(self, run_id: int | None = None) -> list[Evaluation]:
        return [e for e in self.evaluations(run_id) if not e.ok]

    def count(self, run_id: int | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM evaluations", ()
        if run_id is not None:
            sql, args = sql + " WHERE run_id=?", (run_id,)
        with self._lock:
            return int(self._conn.execute(sql, args).fetchone()[0])

    # -- Pareto -------------------------------------------------------------------------
    def pareto_keys(self, run_id: int) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT plan_key FROM pareto WHERE run_id=? ORDER BY plan_key", (run_id,)).fetchall()
        return [r[0] for r in rows]

    def hypervolume_history(self, run_id: int) -> list[tuple[int, float | None]]:
        """(successful evaluations so far, hypervolume) each time the front changed."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT n_evaluations, value FROM hypervolume WHERE run_id=? ORDER BY n_evaluations", (run_id,)
            ).fetchall()
        return [(int(r[0]), r[1]) for r in rows]

    def load_archive(
        self,
        run_id: int,
        reference: Mapping[str, float] | None = None,
        scale: Mapping[str, float] | None = None,
    ) -> ParetoArchive:
        """Rebuild the run's Pareto archive from its successful evaluations (resume)."""
        archive = ParetoArchive(reference=reference, scale=scale)
        for ev in self.evaluations(run_id, include_errors=False):
            archive.add_evaluation(ev)
        return archive


__all__ = ["RunStore", "SCHEMA_VERSION"]
