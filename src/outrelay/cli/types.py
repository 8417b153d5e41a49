"""Click parameter types shared by the long-running commands.

Kept apart from the command modules so that ``outrelay relay``, ``agent``
and the operator commands can use them without importing another command's
dependencies (the controller store, for instance).
"""

from __future__ import annotations

import re

import click

from outrelay.controller.config import parse_duration


class Duration(click.ParamType):
    """``90s``, ``1h30m``, ``30d``; converted to seconds."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float | int):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()

_SIZE = re.compile(r"(\d+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class Size(click.ParamType):
    """``65536``, ``64KiB``, ``1MiB``, ``16M`` (binary units) -> bytes."""

    name = "size"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        match = _SIZE.fullmatch(str(value).strip())
        if match is None:
            self.fail(f"invalid size {value!r} (e.g. 1MiB, 64KiB, 65536)", param, ctx)
        n = int(match.group(1)) * _UNITS[match.group(2)[:1].lower()]
        if n <= 0:
            self.fail("size must be positive", param, ctx)
        return n


SIZE = Size()
