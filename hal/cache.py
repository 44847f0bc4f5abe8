"""Measurement cache: an identical artifact on the same device with the same probe settings
is measured once per run database.

The cache wraps a probe (``cached_probe(probe, cache)``); probes themselves know nothing of it.

Keyed by (SHA-256 of the ONNX bytes, device id, canonical JSON of the probe settings) in one
SQLite table, ``hal_measurements``, of the run database (other tables there belong to the
store). A hit comes back with provenance ``cached``; the original measurement's provenance
is kept in ``meta["cached_from"]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from hadmc.errors import ProbeError

from .energy import EnergyProbe, EstimatedEnergyProbe
from .latency import LatencyProbe
from .results import EnergyResult, LatencyResult, RelativeLatency

log = logging.getLogger(__name__)

TABLE = "hal_measurements"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    onnx_sha256 TEXT NOT NULL,
    device_id TEXT NOT NULL,
    settings TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


def settings_key(settings: dict[str, Any]) -> str:
    """Canonical JSON of probe settings (sorted keys), so equal settings give equal keys."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)


def _as_cached(latency: dict[str, Any]) -> dict[str, Any]:
    """A stored latency result marked ``cached``; its original provenance kept in meta."""
    latency["meta"] = {**latency.get("meta", {}), "cached_from": latency.get("provenance", "measured")}
    latency["provenance"] = "cached"
    return latency


class MeasurementCache:
    """SQLite-backed cache of latency and energy results.

    :param db_path: the run database (``runs/NAME/hadmc.db``) or any SQLite file; created if absent
    :param enabled: False turns every ``get`` into a miss and every ``put`` into a no-op
        (the CLI's ``--no-cache``)
    """

    def __init__(self, db_path: str | Path, enabled: bool = True):
        self.db_path = Path(db_path)
        self.enabled = enabled
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as con, con:
                con.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ProbeError(f"cannot open the measurement cache at {self.db_path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        # one short connection per call: safe across threads and processes sharing the run DB
        return sqlite3.connect(self.db_path, timeout=30.0)

    @staticmethod
    def key(kind: str, onnx_sha256: str, device_id: str, settings: dict[str, Any]) -> str:
        raw = "\n".join([kind, onnx_sha256, device_id, settings_key(settings)])
        return hashlib.sha256(raw.encode()).hexdigest()

    def _get(self, kind: str, onnx_sha256: str, device_id: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        k = self.key(kind, onnx_sha256, device_id, settings)
        with closing(self._connect()) as con:
            row = con.execute(f"SELECT result FROM {TABLE} WHERE key = ?", (k,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _put(self, kind: str, onnx_sha256: str, device_id: str, settings: dict[str, Any], result: dict[str, Any]) -> None:
        if not self.enabled:
            return
        k = self.key(kind, onnx_sha256, device_id, settings)
        with closing(self._connect()) as con, con:
            con.execute(
                f"INSERT OR REPLACE INTO {TABLE} (key, kind, onnx_sha256, device_id, settings, result, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (k, kind, onnx_sha256, device_id, settings_key(settings), json.dumps(result), time.time()),
            )

    # -- latency ------------------------------------------------------------------------
    def get(self, onnx_sha256: str, device_id: str, settings: dict[str, Any]) -> LatencyResult | None:
        """Cached latency result (provenance ``cached``) or None."""
        return self.get_latency(onnx_sha256, device_id, settings)

    def put(self, onnx_sha256: str, device_id: str, settings: dict[str, Any], result: LatencyResult) -> None:
        """Store a measured latency result."""
        self.put_latency(onnx_sha256, device_id, settings, result)

    def get_latency(self, onnx_sha256: str, device_id: str, settings: dict[str, Any]) -> LatencyResult | None:
        data = self._get("latency", onnx_sha256, device_id, settings)
        if data is None:
            return None
        log.debug("latency cache hit %s on %s", onnx_sha256[:12], device_id)
        return LatencyResult.model_validate(_as_cached(data))

    def put_latency(self, onnx_sha256: str, device_id: str, settings: dict[str, Any], result: LatencyResult) -> None:
        if result.provenance == "cached":
            return
        self._put("latency", onnx_sha256, device_id, settings, result.model_dump())

    # -- relative latency ---------------------------------------------------------------
    def get_relative(self, pair_sha256: str, device_id: str, settings: dict[str, Any]) -> RelativeLatency | None:
        """Cached comparison (keyed by the SHA-256 of both artifacts' hashes), provenance ``cached``."""
        data = self._get("relative", pair_sha256, device_id, settings)
        if data is None:
            return None
        data["provenance"] = "cached"
        for part in ("candidate", "reference"):
            _as_cached(data[part])
        return RelativeLatency.model_validate(data)

    def put_relative(self, pair_sha256: str, device_id: str, settings: dict[str, Any], result: RelativeLatency) -> None:
        if result.provenance == "cached":
            return
        self._put("relative", pair_sha256, device_id, settings, result.model_dump())

    # -- energy -------------------------------------------------------------------------
    def get_energy(self, onnx_sha256: str, device_id: str, settings: dict[str, Any]) -> EnergyResult | None:
        """Cached energy result (provenance ``cached``, original in ``detail["cached_from"]``) or None."""
        data = self._get("energy", onnx_sha256, device_id, settings)
        if data is None:
            return None
        data["detail"] = {**data.get("detail", {}), "cached_from": data.get("provenance")}
        data["provenance"] = "cached"
        return EnergyResult.model_validate(data)

    def put_energy(self, onnx_sha256: str, device_id: str, settings: dict[str, Any], result: EnergyResult) -> None:
        if result.provenance == "cached":
            return
        self._put("energy", onnx_sha256, device_id, settings, result.model_dump())

    def __len__(self) -> int:
        with closing(self._connect()) as con:
            return int(con.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])


class CachedLatencyProbe:
    """A latency probe whose ``measure`` goes through a MeasurementCache; everything else
    (``session``, ``settings``, ``device``...) is the wrapped probe's."""

    def __init__(self, probe: LatencyProbe, cache: MeasurementCache):
        self.probe = probe
        self.cache = cache

    def measure(self, model: Any, input_shape: tuple[int, ...] | None = None) -> LatencyResult:
        """The cached figure of an identical artifact, device and settings (provenance
        ``cached``), else a new measurement, stored."""
        key = self.probe.cache_key(model, input_shape)
        if key is None:
            return self.probe.measure(model, input_shape)
        digest, settings = key
        hit = self.cache.get_latency(digest, self.probe.device_id, settings)
        if hit is not None:
            return hit
        result = self.probe.measure(model, input_shape)
        self.cache.put_latency(digest, self.probe.device_id, settings, result)
        return result

    def measure_relative(self, model: Any, reference: Any, input_shape: tuple[int, ...] | None = None, **options: Any) -> RelativeLatency:
        """The cached comparison of an identical candidate and reference, device and settings,
        else a new interleaved measurement, stored."""
        cand, ref = self.probe.cache_key(model, input_shape), self.probe.cache_key(reference, input_shape)
        if cand is None or ref is None:
            return self.probe.measure_relative(model, reference, input_shape, **options)
        digest = hashlib.sha256(f"{cand[0]}:{ref[0]}".encode()).hexdigest()
        settings = {**cand[1], "relative": options, "reference_settings": ref[1]}
        hit = self.cache.get_relative(digest, self.probe.device_id, settings)
        if hit is not None:
            return hit
        result = self.probe.measure_relative(model, reference, input_shape, **options)
        self.cache.put_relative(digest, self.probe.device_id, settings, result)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.probe, name)


class CachedEnergyProbe:
    """An energy probe whose measured figures are reused for an identical artifact (by the
    SHA-256 its latency result carries), device and settings. Estimates are not cached: they
    are cheap and follow the latency figure they are computed from."""

    def __init__(self, probe: EnergyProbe, cache: MeasurementCache):
        self.probe = probe
        self.cache = cache

    def measure(self, run_once: Any, latency: LatencyResult | None = None) -> EnergyResult:
        if latency is None or not latency.onnx_sha256 or isinstance(self.probe, EstimatedEnergyProbe):
            return self.probe.measure(run_once, latency)
        settings = {**self.probe.settings(), "latency_settings": latency.settings}
        device_id = self.probe.device.id
        hit = self.cache.get_energy(latency.onnx_sha256, device_id, settings)
        if hit is not None:
            return hit
        result = self.probe.measure(run_once, latency)
        self.cache.put_energy(latency.onnx_sha256, device_id, settings, result)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.probe, name)


def cached_probe(probe: LatencyProbe | EnergyProbe, cache: MeasurementCache | str | Path) -> CachedLatencyProbe | CachedEnergyProbe:
    """Wrap a latency or energy probe so identical artifacts are measured once (``cache`` may
    be a DB path)."""
    if not isinstance(cache, MeasurementCache):
        cache = MeasurementCache(cache)
    if isinstance(probe, EnergyProbe):
        return CachedEnergyProbe(probe, cache)
    return CachedLatencyProbe(probe, cache)
