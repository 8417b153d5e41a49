"""Structured logging on stderr, as text (``k=v``) or JSON lines.

Attach fields to a record with ``extra=kv(tenant=..., rule_id=...)``. Text
lines look like ``time=… level=INFO msg="rule added" tenant=acme``; JSON
lines are ``{"time":…,"level":"INFO","msg":"rule added","tenant":"acme"}``
(the reference's slog handlers). Level names: debug, info, warn, error.

``grpc_core_logging`` keeps gRPC's C-core lines off stderr unless debug.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sys
from typing import Any, TextIO

#: accepted ``--log-level`` values
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
#: accepted ``--log-format`` values
FORMATS = ("text", "json")

_FIELDS = "outrelay_fields"
_LEVEL_NAMES = {logging.WARNING: "WARN", logging.CRITICAL: "ERROR"}


def kv(**fields: Any) -> dict[str, Any]:
    """``extra=`` argument carrying structured fields for one log call."""
    return {_FIELDS: fields}


def _level(record: logging.LogRecord) -> str:
    return _LEVEL_NAMES.get(record.levelno, record.levelname)


def _time(record: logging.LogRecord) -> str:
    stamp = _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(getattr(record, _FIELDS, {}))
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t\\'):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """``time=… level=… msg="…" logger=… k=v …``"""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"time={_time(record)}",
            f"level={_level(record)}",
            f"msg={json.dumps(record.getMessage())}",
            f"logger={record.name}",
        ]
        parts += [f"{k}={_quote(v)}" for k, v in _fields(record).items()]
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One compact JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": _time(record),
            "level": _level(record),
            "msg": record.getMessage(),
            "logger": record.name,
        }
        for key, value in _fields(record).items():
            obj.setdefault(key, value)
        return json.dumps(obj, separators=(",", ":"), default=str)


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Log to ``stream`` (stderr) at ``level``; calling again replaces the setup.

    Raises ValueError for an unknown level or format.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (debug, info, warn, error)")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (text, json)")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name("outrelay")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "outrelay":  # ours from an earlier call; others stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level.lower()])


#: the environment's GRPC_VERBOSITY / GRPC_TRACE before we changed them
_GRPC_ENV: dict[str, str | None] | None = None


def grpc_core_logging(*, debug: bool) -> None:
    """Silence gRPC's C-core log lines (``E1202 … add_port.cc] …``) unless ``debug``.

    gRPC reads ``GRPC_VERBOSITY`` and ``GRPC_TRACE`` once, when it is first
    imported, so this must run before that (the CLI calls it while parsing
    its options). Not debug: ``GRPC_VERBOSITY=NONE`` and ``GRPC_TRACE=''``;
    debug: the environment's own values are put back. Our own errors already
    say what went wrong in one line. Does nothing once grpc is imported.
    """
    global _GRPC_ENV
    if "grpc" in sys.modules:
        return
    names = ("GRPC_VERBOSITY", "GRPC_TRACE")
    if _GRPC_ENV is None:
        _GRPC_ENV = {name: os.environ.get(name) for name in names}
    if debug:
        for name, value in _GRPC_ENV.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    else:
        os.environ["GRPC_VERBOSITY"] = "NONE"
        os.environ["GRPC_TRACE"] = ""
