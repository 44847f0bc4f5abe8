"""Files the user names, read defensively, and files a run writes, always whole or not at all.

Reading: a plan, run config, device spec or weights file that is missing, a directory, a
device or pipe, empty, too large, binary, unreadable, absurdly nested, or that repeats a key
gives one error naming the file and what is wrong, raised as the caller's error type.

Writing: every artifact, plan, config and report goes to a temporary file in the target's
folder and is renamed over the target only once complete, so a full disk or a crash never
leaves a truncated file; ``check_output_dir`` proves a folder writable before expensive work.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from .errors import HadmcError

#: largest plan, run config or device spec accepted (they are a few KiB)
MAX_TEXT_BYTES = 16 << 20
#: deepest nesting of mappings and lists accepted in a plan, config or spec
MAX_NESTING = 32


def check_user_file(path: str | Path, what: str, error: type[HadmcError], max_bytes: int | None = None) -> Path:
    """``path`` if it is a regular, non-empty file of at most ``max_bytes``; else ``error``
    naming the file and what is wrong with it."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist") from None
    except NotADirectoryError:
        raise error(f"{what} {p} does not exist (a folder on its path is a file)") from None
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {p} is a folder; pass the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {p} is not a regular file (a device, pipe or socket)")
    if st.st_size == 0:
        raise error(f"{what} {p} is empty")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{what} {p} is {st.st_size} bytes, more than the {max_bytes} a {what} may have")
    if not os.access(p, os.R_OK):
        raise error(f"cannot read {what} {p}: permission denied")
    return p


def read_user_text(path: str | Path, what: str, error: type[HadmcError], max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a small file the user named (see ``check_user_file``)."""
    p = check_user_file(path, what, error, max_bytes)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror}") from None
    if b"\x00" in data:
        raise error(f"{what} {p} is binary, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {p} is not UTF-8 text (byte {exc.start} cannot be decoded)") from None


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > MAX_NESTING:
            return depth
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else ())]
    return depth - 1


def _too_deep(what: str, error: type[HadmcError]) -> HadmcError:
    return error(f"{what} nests deeper than {MAX_NESTING} levels")


def _within_nesting(value: Any, what: str, error: type[HadmcError]) -> Any:
    if _depth(value) > MAX_NESTING:
        raise _too_deep(what, error)
    return value


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json_strict(text: str, what: str, error: type[HadmcError]) -> Any:
    """JSON that repeats no key, holds no NaN/Infinity, and nests at most ``MAX_NESTING`` deep."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise error(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise _too_deep(what, error) from None
    return _within_nesting(value, what, error)


def _strict_yaml_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """Safe YAML without aliases (their expansion can be exponential) or repeated keys."""

        def compose_node(self, parent, index):  # type: ignore[override]
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.constructor.ConstructorError(None, None, "aliases (*name) are not allowed here", event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):  # type: ignore[override]
            keys = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    hash(key)
                except TypeError:
                    continue  # SafeLoader itself reports the unhashable key
                if key in keys:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} appears twice", key_node.start_mark)
                keys.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def parse_yaml_strict(text: str, what: str, error: type[HadmcError]) -> Any:
    """Safe YAML that repeats no key, uses no aliases, and nests at most ``MAX_NESTING`` deep."""
    import yaml

    try:
        value = yaml.load(text, Loader=_strict_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{what} is not valid YAML: {problem}{at}") from None
    except RecursionError:
        raise _too_deep(what, error) from None
    return _within_nesting(value, what, error)


def load_mapping(path: str | Path, what: str, error: type[HadmcError]) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON file the user named, which must hold a mapping."""
    p = Path(path)
    text = read_user_text(p, what, error)
    label = f"{what} {p}"
    value = parse_json_strict(text, label, error) if p.suffix == ".json" else parse_yaml_strict(text, label, error)
    if not isinstance(value, dict):
        raise error(f"{label} must hold a mapping of settings, got {type(value).__name__}")
    return value


def finite_number(value: Any) -> bool:
    """A real number (not a bool) that is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------- writing


def write_atomic(path: str | Path, data: bytes | str, error: type[HadmcError] = HadmcError) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder (created if
    needed), renamed over ``path`` once complete: a reader, or a killed run, sees the old file
    or the new one, never half of one.

    :raises error: naming the file (and a full disk) when it cannot be written; the
        temporary file is removed and an existing ``path`` is left as it was
    """
    p = Path(path)
    payload = data.encode() if isinstance(data, str) else bytes(data)
    fd, tmp = None, None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as readable as any other
        with os.fdopen(fd, "wb") as handle:
            fd = None
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, p)
        tmp = None
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise error(f"cannot write {p}: {reason}; nothing was written there") from None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any, error: type[HadmcError] = HadmcError) -> Path:
    """Pretty JSON, written atomically."""
    return write_atomic(path, json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n", error)


def check_output_dir(folder: str | Path, error: type[HadmcError] = HadmcError, need_bytes: int = 1 << 20) -> Path:
    """Create ``folder`` if needed and prove it writable, with ``need_bytes`` free, before the
    expensive work whose results go there starts."""
    p = Path(folder).expanduser()
    if p.exists() and not p.is_dir():
        raise error(f"output folder {p} is a file; pass a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"cannot create output folder {p}: {exc.strerror}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=p, prefix=".hadmc-write-check-") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise error(f"cannot write into output folder {p}: {reason}") from None
    free = shutil.disk_usage(p).free
    if free < need_bytes:
        raise error(f"output folder {p} has {free // 1024} KiB free, less than the {need_bytes // 1024} KiB needed")
    return p


__all__ = [
    "check_output_dir",
    "finite_number",
    "check_user_file",
    "load_mapping",
    "parse_json_strict",
    "parse_yaml_strict",
    "read_user_text",
    "write_atomic",
    "write_json",
]
