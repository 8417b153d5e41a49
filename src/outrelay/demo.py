"""``make demo``: a whole OutRelay deployment on 127.0.0.1, started, used and stopped.

``python -m outrelay.demo`` makes a temporary state directory, writes a dev
PKI into it, starts the controller (its SQLite file in the state directory),
a relay and two agents as real ``outrelay`` processes, serves a small HTTP
page behind the provider agent, shows the closed world (the provider may
not register its service without a bind rule, and nothing flows without a
dial rule), adds the bind rule and the allow rules with the operator CLI,
fetches the page through the consumer agent's local port, prints the audit
records and a metrics excerpt, and stops everything. Exit status 0 when every step worked, 1 with
a one-line reason otherwise.

Every child runs in a session of its own, so a Ctrl-C in the terminal
reaches only this process, which then stops the children itself: in reverse
start order, SIGTERM first and SIGKILL after a deadline, by PID. The same
happens on SIGTERM, on a failed step and at the normal end (a ``finally``
block), so nothing is left running. ``--keep`` leaves the deployment up
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from outrelay.childproc import ComponentProcess, NotReadyError, child_env, outrelay_argv
from outrelay.identity import peer_uri

TENANT = "acme"
SERVICE = "web"
#: Deadline for a process to write its ready file.
READY_TIMEOUT = 30.0
#: Time a process gets between SIGTERM and SIGKILL.
STOP_GRACE = 10.0
#: Deadline for a one-shot CLI command and for each polled condition.
STEP_TIMEOUT = 15.0
#: Relay metrics shown at the end (Prometheus names start with these).
METRICS = (
    "agents_connected",
    "stream_opens",
    "stream_rejects",
    "splices_active",
    "bytes_forwarded",
    "audit_sent",
)

PAGE = "Hello from the provider's backend! You asked for {path}\n"


class DemoError(Exception):
    """A step failed; ``str()`` is the one-line reason."""

    def __init__(self, reason: str, log: Child | None = None) -> None:
        super().__init__(reason)
        #: The process whose log explains the failure, if any.
        self.log = log


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _child_env() -> dict[str, str]:
    """Our environment without ``OUTRELAY_*`` option variables (they would change flags)."""
    return child_env(keep={"OUTRELAY_NO_EXTENSIONS", "OUTRELAY_REQUIRE_EXTENSIONS"})


class Shell:
    """Runs ``outrelay`` commands and prints them with the state directory as ``$STATE``."""

    def __init__(self, state: Path) -> None:
        self.state = state

    def show(self, args: Sequence[str]) -> str:
        line = shlex.join(["outrelay", *args])
        return line.replace(str(self.state), "$STATE")

    def argv(self, args: Sequence[str]) -> list[str]:
        return outrelay_argv(args)

    def run(self, args: Sequence[str], *, echo: bool = True) -> str:
        """Run a one-shot command; return its stdout. Raises DemoError on failure."""
        if echo:
            say(f"$ {self.show(args)}")
        try:
            done = subprocess.run(
                self.argv(args),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=_child_env(),
                timeout=STEP_TIMEOUT,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise DemoError(f"`{self.show(args[:2])}` took more than {STEP_TIMEOUT:g}s") from exc
        if done.returncode != 0:
            err = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DemoError(f"`{self.show(args[:2])}` exited {done.returncode}: {err}")
        return done.stdout


class Child(ComponentProcess):
    """One long-running ``outrelay`` command, ready once it wrote its ready file."""

    def __init__(self, shell: Shell, name: str, args: Sequence[str]) -> None:
        # Its own session: terminal signals go to the demo only.
        super().__init__(name, args, shell.state, env=_child_env(), new_session=True)
        self.shell = shell

    def spawn(self) -> None:
        """Show the command, then start the process."""
        say(f"$ {self.shell.show(self.args)}")
        super().spawn()

    def ready(self, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Wait for the ready file. Raises DemoError if the process exits or times out."""
        try:
            return self.wait_ready(timeout)
        except NotReadyError as exc:
            if exc.returncode is not None:
                raise DemoError(f"{self.name} exited {exc.returncode} at startup", self) from exc
            raise DemoError(f"{self.name} not ready after {timeout:g}s", self) from exc

    def stop_and_say(self, grace: float = STOP_GRACE) -> str:
        """SIGTERM, then SIGKILL after ``grace`` seconds; say how it ended."""
        if self.proc is None:
            return "never started"
        if self.proc.poll() is not None:
            return f"had already exited {self.proc.returncode}"
        try:
            return f"exit {self.stop(grace)}"
        except subprocess.TimeoutExpired:
            return f"killed after {grace:g}s"

    def log_lines(self, lines: int = 15) -> list[str]:
        """The last ``lines`` lines of the log."""
        return self.log().splitlines()[-lines:]


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = PAGE.format(path=self.path).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the demo prints what matters


class Backend:
    """The provider's HTTP backend: a stdlib server on a thread of the demo process."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _excerpt(line: str) -> bool:
    """Is this Prometheus sample one of METRICS (or a per-code reject counter)?"""
    if not line or line.startswith("#"):
        return False
    name = line.split()[0].split("{")[0].removeprefix("outrelay_").removesuffix("_total")
    return name in METRICS or name.startswith("stream_rejects_")


def say(text: str = "", indent: int = 2) -> None:
    print(" " * indent + text if text else "", flush=True)


def heading(number: int, total: int, title: str) -> None:
    print(f"\n[{number}/{total}] {title}", flush=True)


def fetch(url: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """GET ``url`` directly (never through a proxy): (status, reason, body)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return resp.status, resp.reason, resp.read().decode("utf-8", "replace")


class Demo:
    """The deployment: state directory, children in start order, the backend."""

    STEPS = 11  # plus the final "stop everything", which always runs

    def __init__(self, state: Path) -> None:
        self.state = state
        self.pki = state / "pki"
        self.shell = Shell(state)
        self.children: list[Child] = []
        self.backend: Backend | None = None
        self.step = 0

    def heading(self, title: str) -> None:
        self.step += 1
        heading(self.step, self.STEPS + 1, title)

    def child(self, name: str) -> Child:
        return next(child for child in self.children if child.name == name)

    def info(self, name: str) -> dict[str, Any]:
        """The ready file of the child called ``name``."""
        return self.child(name).addresses

    def tls(self, stem: str) -> list[str]:
        """``--cert/--key/--ca`` options for the dev-bundle leaf ``stem``."""
        leaf = self.pki / stem
        return ["--cert", f"{leaf}.crt", "--key", f"{leaf}.key", "--ca", str(self.pki / "ca.crt")]

    def admin(self) -> list[str]:
        """Options of an operator command: the controller and the admin leaf."""
        return ["--controller", self.info("controller")["grpc"], *self.tls("admin-admin")]

    def start(self, *children: tuple[str, list[str]]) -> None:
        """Spawn ``(name, args)`` children together, then wait for each to be ready."""
        spawned = [Child(self.shell, name, args) for name, args in children]
        for child in spawned:
            self.children.append(child)
            child.spawn()
        for child in spawned:
            child.ready()
            say(f"{child.name} is up: pid {child.pid}")

    def consumer_url(self, path: str) -> str:
        return f"http://{self.info('consumer')['consume'][SERVICE]}{path}"

    def run(self) -> None:
        """Every step up to the working deployment. Raises DemoError."""
        self.heading("dev PKI: a CA and leaves for the controller, relay, agents, admin")
        self.shell.run(["pki", "dev", "--out", str(self.pki), "--tenant", TENANT])
        say("wrote " + ", ".join(sorted(p.name for p in self.pki.glob("*.crt"))))

        self.heading("controller (gRPC with mTLS, state in one SQLite file)")
        db = str(self.state / "controller.db")
        listen = ["--listen", "127.0.0.1:0", "--enroll-listen", "", "--debug-listen", ""]
        self.start(("controller", ["controller", *listen, "--db", db, *self.tls("controller")]))
        controller = self.info("controller")["grpc"]
        say(f"gRPC on {controller}")

        self.heading(f"relay r1 (QUIC; enforces tenant {TENANT}'s policies, audits)")
        listen = ["--listen", "127.0.0.1:0", "--debug-listen", "127.0.0.1:0"]
        ids = ["--relay-id", "r1", "--tenant", TENANT, "--controller", controller]
        self.start(("relay", ["relay", *listen, *ids, *self.tls("relay-r1")]))
        relay = self.info("relay")
        say(f"QUIC on {relay['quic']}, metrics on http://{relay['debug']}/metrics")

        self.backend = Backend()
        agent = ["agent", "--relay", relay["quic"]]
        expose = ["--expose", f"{SERVICE}={self.backend.address}"]
        consume = ["--consume", f"{SERVICE}=127.0.0.1:0"]
        provider_args = [*agent, *self.tls("agent-provider"), *expose]

        self.heading("closed world: no bind rule, so the provider may not register its service")
        say(f"backend (a thread of this demo) serves http://{self.backend.address}/")
        self.register_refused(provider_args)

        self.heading("bind rule: this provider identity may provide the service")
        provider_uri = peer_uri((self.pki / "agent-provider.crt").read_bytes())
        rule = ["--caller", provider_uri, "--target", SERVICE, "--decision", "allow"]
        out = self.shell.run(["policy", "add", "--action", "bind", *self.admin(), *rule])
        say(f"rule id {out.strip()}")

        self.heading("HTTP backend and two agents, both dialling out to the relay")
        self.start(
            ("provider", provider_args),
            ("consumer", [*agent, *self.tls("agent-consumer"), *consume]),
        )
        provider, consumer = self.info("provider"), self.info("consumer")
        say(f"provider {provider['uri']} exposes {SERVICE!r}")
        say(f"consumer {consumer['uri']} listens on {consumer['consume'][SERVICE]}")

        self.heading("closed world: no dial rule yet, so no traffic")
        self.fetch_refused()

        self.heading("allow policy (dial rules), added with the operator CLI (admin certificate)")
        # The relay asks twice: may the consumer call the service (caller
        # side), and does the provider accept this consumer (callee side)?
        for caller, target in (("*", SERVICE), (provider["uri"], consumer["uri"])):
            rule = ["--caller", caller, "--target", target, "--decision", "allow"]
            out = self.shell.run(["policy", "add", *self.admin(), *rule])
            say(f"rule id {out.strip()}")
        added = time.monotonic()

        self.heading("fetch a page through the consumer's local port")
        status, reason, body, attempts = self.fetch_allowed()
        took = time.monotonic() - added
        tries = "1 try" if attempts == 1 else f"{attempts} tries"
        say(f"GET {self.consumer_url('/hello')}")
        say(f"-> {status} {reason} ({took:.2f}s after the rules were added, {tries})")
        for line in body.splitlines():
            say("| " + line)

        self.heading("audit records (one per policy decision)")
        self.show_audit()

        self.heading("relay metrics excerpt")
        self.show_metrics(relay["debug"])

    def register_refused(self, args: list[str]) -> None:
        """Start the provider before its bind rule exists: it must exit 1 with the reason."""
        child = Child(self.shell, "provider", args)
        child.spawn()
        try:
            try:
                child.wait_ready(STEP_TIMEOUT)
            except NotReadyError as exc:
                if exc.returncode != 1:
                    raise DemoError("the unbound provider did not exit 1", child) from exc
            else:
                raise DemoError("the provider registered without a bind rule", child)
        finally:
            child.kill()
        error = next((ln for ln in reversed(child.log_lines(20)) if "refused" in ln), "")
        if "bind denied" not in error:
            raise DemoError("the provider's refusal does not say 'bind denied'", child)
        say(f"provider exited 1: {error.strip()}")

    def fetch_refused(self) -> None:
        consumer = self.child("consumer")
        url = self.consumer_url("/")
        try:
            status, _, _ = fetch(url)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            say(f"GET {url} -> failed ({type(exc).__name__}): the consumer closed it")
        else:
            raise DemoError(f"GET {url} answered {status} without any policy")
        line = self.wait_log(consumer, "rejected: 403")
        msg = re.search(r'msg="(?:agent: )?([^"]*)"', line)
        say(f"consumer log: {msg.group(1) if msg else line.strip()}")

    def fetch_allowed(self) -> tuple[int, str, str, int]:
        # The rule reaches the relay through Policy.Watch, usually within
        # milliseconds; a fetch just before that is refused and retried.
        deadline = time.monotonic() + STEP_TIMEOUT
        attempts = 0
        while True:
            attempts += 1
            try:
                status, reason, body = fetch(self.consumer_url("/hello"))
                return status, reason, body, attempts
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"the page did not come through within {STEP_TIMEOUT:g}s: {exc}",
                        self.child("consumer"),
                    ) from exc
                time.sleep(0.05)

    def wait_log(self, child: Child, text: str) -> str:
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            for line in child.log_lines(200):
                if text in line:
                    return line
            time.sleep(0.05)
        raise DemoError(f"{child.name} never logged {text!r}", child)

    def show_audit(self) -> None:
        # The relay sends audit events in batches: poll until the allowed
        # stream's two decisions (caller side and callee side) are stored.
        query = ["audit", "query", *self.admin()]
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            rows = json.loads(self.shell.run([*query, "-o", "json"], echo=False))
            if sum(r.get("decision") == "allow" for r in rows) >= 2:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"the allow decisions were not audited within {STEP_TIMEOUT:g}s")
            time.sleep(0.1)
        for line in self.shell.run(query).splitlines():
            say(line, indent=4)

    def show_metrics(self, debug: str) -> None:
        url = f"http://{debug}/metrics"
        say(f"GET {url} (excerpt)")
        try:
            _, _, text = fetch(url)
        except (urllib.error.URLError, OSError) as exc:
            raise DemoError(f"relay metrics unreachable: {exc}", self.child("relay")) from exc
        shown = [line for line in text.splitlines() if _excerpt(line)]
        if not any("bytes_forwarded" in line for line in shown):
            raise DemoError("the relay's /metrics has no bytes_forwarded", self.child("relay"))
        for line in shown:
            say(line, indent=4)

    def keep(self) -> None:
        """Block until Ctrl-C (or until a child dies)."""
        print("\nRunning; press Ctrl-C to stop everything.", flush=True)
        while all(child.alive() for child in self.children):
            time.sleep(0.2)
        dead = next(child for child in self.children if not child.alive())
        raise DemoError(f"{dead.name} exited on its own", dead)

    def stop(self) -> bool:
        """Stop the children in reverse start order; True if each exited 0."""
        clean = True
        for child in reversed(self.children):
            how = child.stop_and_say()
            clean &= how == "exit 0"
            pid = child.proc.pid if child.proc is not None else "-"
            say(f"{child.name} (pid {pid}): {how}")
        if self.backend is not None:
            self.backend.close()
            say("backend closed")
        left = [c for c in self.children if c.alive()]
        if left:  # cannot happen after a reaped SIGKILL; said for the record
            say("still running: " + ", ".join(f"{c.name} {c.pid}" for c in left))
            return False
        return clean


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m outrelay.demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="use (and keep) this new or empty directory instead of a temporary one",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    started = time.monotonic()
    try:
        if args.state_dir is not None:
            state = args.state_dir.resolve()
            state.mkdir(parents=True, exist_ok=True)
            if any(state.iterdir()):  # an earlier run's database would hold its rules
                parser.error(f"--state-dir {state} is not empty")
        else:
            state = Path(tempfile.mkdtemp(prefix="outrelay-demo-"))
    except OSError as exc:
        print(f"Demo failed: no state directory: {exc}", file=sys.stderr)
        return 1
    print("OutRelay demo: controller, relay and two agents on 127.0.0.1")
    print(f"STATE={state}")
    demo = Demo(state)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    reason = ""
    try:
        demo.run()
        if args.keep:
            demo.keep()
    except DemoError as exc:
        status, reason = 1, str(exc)
        if exc.log is not None:
            print(f"\n-- last lines of {exc.log.name}.log --", flush=True)
            for line in exc.log.log_lines():
                say(line)
    except Interrupted as exc:
        # Ctrl-C is how --keep ends once everything is up; anything else is a failure.
        up = args.keep and demo.step == demo.STEPS
        status = 0 if up and exc.signum == signal.SIGINT else 128 + exc.signum
        reason = f"interrupted ({exc})"
    except Exception as exc:  # a bug, or an environment we did not foresee: still one line
        status, reason = 1, f"{type(exc).__name__}: {exc}"
    finally:
        # Bounded by STOP_GRACE per child; a second Ctrl-C must not cut it short.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        last = demo.STEPS + 1
        heading(last, last, "stop everything (SIGTERM, SIGKILL after a deadline)")
        clean = demo.stop()
        if args.state_dir is None:
            shutil.rmtree(state, ignore_errors=True)
            say(f"removed {state}")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status == 0 and not clean:
        status, reason = 1, "a process did not exit cleanly"
    took = time.monotonic() - started
    if status == 0:
        print(f"\nDemo finished in {took:.1f}s; no process left running.", flush=True)
    else:
        print(f"\nDemo failed after {took:.1f}s: {reason}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
