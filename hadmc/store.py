"""Run store: the run's SQLite database (runs, evaluations, Pareto front, hypervolume).

Every write is one transaction, the journal is WAL (a killed run loses at most the write in
flight, and readers such as the report never block the search), and a reopened store picks
up where it stopped: `open_run` with an existing name resumes that run, `load_archive`
rebuilds its Pareto archive from the stored evaluations.

Evaluations are keyed by (plan key, context): the plan's canonical SHA-256 and a key of
everything else that changes the figures (model, data, device, probe settings, phase; see
`RunConfig.evaluation_context`). `lookup` returns the earlier successful Evaluation so an
identical plan is never applied twice. Failed evaluations are stored too (one row per
attempt, with the error); they are not cache hits across runs, so a transient fault (a probe
that was down) does not condemn a plan forever, while `lookup_failure` lets one run answer a
plan that already failed in it without trying again.

Each evaluation has a phase (``search``: validation split, search fidelity; ``final``: test
split, full fidelity); the Pareto rows and the hypervolume history are kept per phase.
`run_meta` holds per-run facts (searcher, wall time, predicted episodes, checkpoints).

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

SCHEMA_VERSION = 2

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
    phase TEXT NOT NULL DEFAULT 'final',
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
    phase TEXT NOT NULL DEFAULT 'final',
    plan_key TEXT NOT NULL,
    accuracy REAL, latency_ms REAL, energy_mj REAL, model_bytes INTEGER,
    PRIMARY KEY (run_id, phase, plan_key)
);
CREATE TABLE IF NOT EXISTS hypervolume (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    phase TEXT NOT NULL DEFAULT 'final',
    n_evaluations INTEGER NOT NULL,
    value REAL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, phase, n_evaluations)
);
CREATE TABLE IF NOT EXISTS run_meta (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
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
                "INSERT INTO evaluations(run_id, plan_key, context, phase, plan_json, evaluation_json, accuracy, latency_ms,"
                " energy_mj, model_bytes, reward, error, wall_s, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    evaluation.plan_key,
                    context,
                    evaluation.phase,
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
                self._write_front(cur, run_id, evaluation.phase, archive, now)
            cur.execute("UPDATE runs SET updated=? WHERE id=?", (now, run_id))
        return True

    def _write_front(self, cur: sqlite3.Cursor, run_id: int, phase: str, archive: ParetoArchive, now: float) -> None:
        cur.execute("DELETE FROM pareto WHERE run_id=? AND phase=?", (run_id, phase))
        cur.executemany(
            "INSERT INTO pareto(run_id, phase, plan_key, accuracy, latency_ms, energy_mj, model_bytes) VALUES (?,?,?,?,?,?,?)",
            [
                (run_id, phase, p.plan_key, p.values.get("accuracy"), p.values.get("latency_ms"), p.values.get("energy_mj"),
                 None if p.values.get("model_bytes") is None else int(p.values["model_bytes"]))
                for p in archive.points
            ],
        )
        # n counts distinct plans evaluated in this phase so far (failed ones included): the
        # searchers' budget, so curves of different searchers share one x axis.
        n = cur.execute(
            "SELECT COUNT(DISTINCT plan_key) FROM evaluations WHERE run_id=? AND phase=?", (run_id, phase)
        ).fetchone()[0]
        cur.execute(
            "INSERT OR REPLACE INTO hypervolume(run_id, phase, n_evaluations, value, created) VALUES (?,?,?,?,?)",
            (run_id, phase, n, archive.hypervolume(), now),
        )

    def lookup_failure(self, plan_key: str, context: str, run_id: int) -> Evaluation | None:
        """The last failed attempt of this plan in this run and context, if it never succeeded."""
        with self._lock:
            row = self._conn.execute(
                "SELECT evaluation_json FROM evaluations WHERE plan_key=? AND context=? AND run_id=? AND error IS NOT NULL"
                " ORDER BY id DESC LIMIT 1",
                (plan_key, context, run_id),
            ).fetchone()
        return None if row is None else Evaluation.model_validate_json(row[0])

    def distinct_plans(self, run_id: int, context: str) -> int:
        """Distinct plans this run evaluated in this context, failed ones included (a searcher's budget)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(DISTINCT plan_key) FROM evaluations WHERE run_id=? AND context=?", (run_id, context)
            ).fetchone()
        return int(row[0])

    def rewards(self, run_id: int, context: str) -> dict[str, float]:
        """Plan key -> stored reward of this run's evaluations in this context."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT plan_key, reward FROM evaluations WHERE run_id=? AND context=? AND reward IS NOT NULL ORDER BY id",
                (run_id, context),
            ).fetchall()
        return {r[0]: float(r[1]) for r in rows}

    def evaluations(
        self, run_id: int | None = None, *, include_errors: bool = True, phase: str | None = None, context: str | None = None
    ) -> list[Evaluation]:
        """Stored evaluations in arrival order (all runs when `run_id` is None), optionally of one phase or context."""
        sql = "SELECT evaluation_json FROM evaluations"
        cond, args = [], []
        if run_id is not None:
            cond.append("run_id=?")
            args.append(run_id)
        if phase is not None:
            cond.append("phase=?")
            args.append(phase)
        if context is not None:
            cond.append("context=?")
            args.append(context)
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
    def pareto_keys(self, run_id: int, phase: str | None = None) -> list[str]:
        sql, args = "SELECT plan_key FROM pareto WHERE run_id=?", [run_id]
        if phase is not None:
            sql, args = sql + " AND phase=?", [run_id, phase]
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY plan_key", args).fetchall()
        return [r[0] for r in rows]

    def hypervolume_history(self, run_id: int, phase: str | None = None) -> list[tuple[int, float | None]]:
        """(distinct plans evaluated so far, hypervolume) each time the front changed."""
        sql, args = "SELECT n_evaluations, value FROM hypervolume WHERE run_id=?", [run_id]
        if phase is not None:
            sql, args = sql + " AND phase=?", [run_id, phase]
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY n_evaluations", args).fetchall()
        return [(int(r[0]), r[1]) for r in rows]

    def load_archive(
        self,
        run_id: int,
        reference: Mapping[str, float] | None = None,
        scale: Mapping[str, float] | None = None,
        phase: str | None = None,
        context: str | None = None,
    ) -> ParetoArchive:
        """Rebuild the run's Pareto archive from its successful evaluations (resume)."""
        archive = ParetoArchive(reference=reference, scale=scale)
        for ev in self.evaluations(run_id, include_errors=False, phase=phase, context=context):
            archive.add_evaluation(ev)
        return archive

    # -- per-run facts ------------------------------------------------------------------
    def set_meta(self, run_id: int, **values: Any) -> None:
        """Store JSON-serialisable facts about a run (one transaction)."""
        with self._transaction() as cur:
            cur.executemany(
                "INSERT OR REPLACE INTO run_meta(run_id, key, value) VALUES (?,?,?)",
                [(run_id, k, json.dumps(v, default=str)) for k, v in values.items()],
            )

    def meta(self, run_id: int) -> dict[str, Any]:
        with self._lock:
            rows = self._conn.execute("SELECT key, value FROM run_meta WHERE run_id=?", (run_id,)).fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    def run_id(self, name: str) -> int | None:
        with self._lock:
            row = self._conn.execute("SELECT id FROM runs WHERE name=?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def run_status(self, run_id: int) -> str:
        with self._lock:
            row = self._conn.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise ConfigError(f"run id {run_id} is not in {self.path}")
        return str(row[0])


__all__ = ["RunStore", "SCHEMA_VERSION"]
