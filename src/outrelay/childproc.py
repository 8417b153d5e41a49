"""One ``outrelay <component>`` child process: start, wait until ready, read its log, stop.

Internal helper shared by the test helpers (``controller.testing``,
``relay.testing``, ``agent.testing``) and the demo; not a stable API.

:class:`ComponentProcess` runs ``python -m outrelay <args> --ready-file
<workdir>/<name>.ready.json`` with stdin from ``/dev/null`` and stdout and
stderr appended to ``<workdir>/<name>.log``. It is ready once the ready file
holds valid JSON (:attr:`~ComponentProcess.addresses`); every wait has a
deadline. It is stopped by PID: SIGTERM, then SIGKILL after a deadline.
The child gets our environment without ``OUTRELAY_*`` variables, which
would otherwise change its options behind the caller's back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

#: How often a wait looks at the ready file or the log (seconds).
POLL_INTERVAL = 0.02
#: Characters of the log shown in an error message.
LOG_TAIL = 8000


def outrelay_argv(args: Sequence[str]) -> list[str]:
    """The command line running ``outrelay *args`` with this interpreter."""
    return [sys.executable, "-m", "outrelay", *args]


def child_env(keep: Collection[str] = ()) -> dict[str, str]:
    """Our environment without ``OUTRELAY_*`` variables, except those named in ``keep``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OUTRELAY_") or k in keep}


def write_ready_file(path: str | os.PathLike[str], info: Mapping[str, str]) -> None:
    """Write a component's ready file (one JSON object) atomically.

    The counterpart of :meth:`ComponentProcess.start`'s wait: readers never
    see a half-written file.
    """
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(dict(info)) + "\n")
    os.replace(tmp, target)


class NotReadyError(RuntimeError):
    """The child exited, or did not write its ready file in time."""

    def __init__(self, message: str, returncode: int | None) -> None:
        super().__init__(message)
        #: The child's exit status (``None``: it was still running at the deadline).
        self.returncode = returncode


class ComponentProcess:
    """``python -m outrelay <args>`` as a child process, ready once it wrote its ready file.

    ``name`` names the ready file, the log and the process in messages.
    ``env`` replaces the environment (default: :func:`child_env`);
    ``new_session`` starts the child in a session of its own, so that a
    Ctrl-C in the terminal reaches only us.
    """

    #: Default deadline of :meth:`start` (seconds).
    start_timeout = 20.0

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.ready_file = workdir / f"{name}.ready.json"
        self.log_path = workdir / f"{name}.log"
        #: What follows ``python -m outrelay`` (``--ready-file`` included).
        self.args = [*args, "--ready-file", str(self.ready_file)]
        self.env = dict(env) if env is not None else None
        self.new_session = new_session
        self.proc: subprocess.Popen[bytes] | None = None
        #: The ready file's content.
        self.addresses: dict[str, Any] = {}

    @property
    def argv(self) -> list[str]:
        """The whole command line."""
        return outrelay_argv(self.args)

    @property
    def pid(self) -> int:
        """The child's PID. Raises RuntimeError before :meth:`spawn`."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc.pid

    def alive(self) -> bool:
        """Started and not exited (an exited child is reaped here)."""
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        """Start the child without waiting for it (see :meth:`wait_ready`)."""
        self.ready_file.unlink(missing_ok=True)  # an earlier run's file would look ready
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env() if self.env is None else self.env,
                cwd=self.workdir,
                start_new_session=self.new_session,
            )

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Wait until the ready file holds valid JSON; return it (also :attr:`addresses`).

        Raises NotReadyError (with the log's tail) if the child exits first
        or after ``timeout`` seconds; the child is left as it is.
        """
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise NotReadyError(f"{self.name} exited {code}:\n{self.log_tail()}", code)
            info = self._read_ready()
            if info is not None:
                self.addresses = info
                return info
            time.sleep(POLL_INTERVAL)
        raise NotReadyError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}", None)

    def _read_ready(self) -> dict[str, Any] | None:
        try:
            info = json.loads(self.ready_file.read_text())
        except (FileNotFoundError, ValueError):  # not yet there, or half written
            return None
        return info if isinstance(info, dict) else None

    def start(self, timeout: float | None = None) -> Self:
        """Spawn and wait until ready (default :attr:`start_timeout`).

        Raises NotReadyError (a RuntimeError) if the child exits or times
        out; it is killed in that case.
        """
        self.spawn()
        try:
            self.wait_ready(self.start_timeout if timeout is None else timeout)
        except NotReadyError:
            self.kill()
            raise
        return self

    def log(self) -> str:
        """Everything the child wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = LOG_TAIL) -> str:
        """The last ``chars`` characters of :meth:`log`."""
        return self.log()[-chars:]

    def wait_log(self, text: str, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``text`` was logged ``count`` times; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} x{count} not logged:\n{self.log_tail(4000)}")
            time.sleep(POLL_INTERVAL)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child if it is running."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; return the exit status (0 if never started).

        After ``timeout`` seconds the child is SIGKILLed and
        ``subprocess.TimeoutExpired`` is raised.
        """
        if self.proc is None:
            return 0
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL and reap (nothing if not running)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Self:
        """Start the child unless it was started already."""
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
