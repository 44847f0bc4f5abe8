"""Bearer tokens of the remote probe, and the limit on wrong ones."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from hadmc.errors import ConfigError

#: shortest token accepted, from a file or from the environment alike
MIN_TOKEN_CHARS = 16
TOKEN_ENV = "HADMC_PROBE_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token(token: str, source: str) -> str:
    """``token`` stripped, or a ConfigError naming ``source`` when it is too short."""
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"the token in {source} is too short ({len(token)} characters); use at least {MIN_TOKEN_CHARS} "
            "random characters, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(f"the token in {source} holds spaces or control characters; use URL-safe characters only")
    return token


def read_token_file(path: str | Path) -> str:
    """The token kept in ``path`` (at least ``MIN_TOKEN_CHARS`` characters)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"token file {p} does not exist or is not a file")
    try:
        raw = p.read_bytes()[:4096]
    except OSError as exc:
        raise ConfigError(f"cannot read token file {p}: {exc.strerror}") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"token file {p} is not plain ASCII text") from None
    return check_token(text, f"token file {p}")


def resolve_token(token_file: str | Path | None, environ: Mapping[str, str] = os.environ) -> tuple[str | None, str]:
    """(token, where it came from): ``token_file`` first, then ``$HADMC_PROBE_TOKEN``; both must be
    equally long. (None, "none") when neither is set."""
    if token_file is not None:
        return read_token_file(token_file), f"token file {token_file}"
    env = environ.get(TOKEN_ENV)
    if env:
        return check_token(env, f"${TOKEN_ENV}"), f"${TOKEN_ENV}"
    return None, "none"


class AuthFailureLimiter:
    """Wrong tokens per client address: after ``max_failures`` within ``window_s`` seconds, the
    address is refused (HTTP 429) until its oldest failure leaves the window.

    :param max_failures: wrong tokens allowed per address and window
    :param window_s: length of the window in seconds
    :param max_clients: addresses remembered at most (older ones are forgotten first)
    """

    def __init__(self, max_failures: int = 10, window_s: float = 60.0, max_clients: int = 10_000):
        self.max_failures = int(max_failures)
        self.window_s = float(window_s)
        self.max_clients = int(max_clients)
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client, deque())
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return times

    def retry_after(self, client: str) -> float:
        """Seconds ``client`` must wait before its token is checked again (0: not blocked)."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            if len(times) < self.max_failures:
                return 0.0
            return max(self.window_s - (now - times[0]), 0.0)

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            times.append(now)
            self._failures.pop(client, None)
            self._failures[client] = times  # most recently failing last
            while len(self._failures) > self.max_clients:
                self._failures.pop(next(iter(self._failures)))
