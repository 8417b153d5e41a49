"""Acceptance (issue 5), slow consumer: backpressure bounds memory end to end.

A client sends 256 MiB as fast as it can into the consumer agent's local
port; the provider agent's backend reads 2 MB/s. The transfer therefore
takes about 134 s, and every byte the backend does not yet want must wait
in the sender's own socket, not in the relay or the agents. The relay's,
the provider's and the consumer's VmRSS are sampled every 0.5 s: each stays
below 150 MB, and the backend's SHA-256 equals the sender's.
"""

from __future__ import annotations

import hashlib
import random
import socket
import socketserver
import threading
import time

import pytest

from .conftest import Stack, tcp_server, vm_rss

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MiB = 1024 * 1024
SIZE = 256 * MiB
RATE = 2_000_000  # bytes per second the backend reads
RSS_LIMIT = 150_000_000


class _SlowSink(socketserver.BaseRequestHandler):
    """Read at RATE, hash everything; after EOF answer ``"<bytes> <sha256>\\n"``."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        digest, count, start = hashlib.sha256(), 0, time.monotonic()
        while data := sock.recv(64 * 1024):
            digest.update(data)
            count += len(data)
            ahead = count / RATE - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)  # the rate limit itself, not a synchronisation
        sock.sendall(f"{count} {digest.hexdigest()}\n".encode())
        sock.shutdown(socket.SHUT_WR)


class RssSampler(threading.Thread):
    """Samples VmRSS of named PIDs every ``interval`` seconds until stopped."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.interval = interval
        self.peak = dict.fromkeys(pids, 0)
        self.first: dict[str, int] = {}
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for name, pid in self.pids.items():
                rss = vm_rss(pid)
                self.first.setdefault(name, rss)
                self.peak[name] = max(self.peak[name], rss)
            self.samples += 1
            self.halt.wait(self.interval)


@pytest.mark.timeout(480)
def test_slow_backend_256_mib_bounded_rss(stack: Stack) -> None:
    stack.policy_add("allow-all", "*", "allow")
    with tcp_server(_SlowSink) as backend:
        provider = stack.agent("provider", who="provider", expose={"svc-sink": backend})
        consumer = stack.agent("consumer", who="consumer", consume=["svc-sink"])
        sampler = RssSampler(
            {"relay": stack.relay_pid, "provider": provider.pid, "consumer": consumer.pid}
        )
        sampler.start()
        sent = hashlib.sha256()
        start = time.monotonic()
        try:
            with socket.create_connection(consumer.consume_addr("svc-sink"), timeout=60) as sock:
                rng = random.Random(256)
                for _ in range(SIZE // MiB):
                    data = rng.randbytes(MiB)
                    sent.update(data)
                    sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
        finally:
            sampler.halt.set()
            sampler.join(5)
        took = time.monotonic() - start
    peaks = ", ".join(
        f"{name} {sampler.first[name] / 1e6:.0f} -> {peak / 1e6:.0f} MB"
        for name, peak in sampler.peak.items()
    )
    print(
        f"\n256 MiB in {took:.0f}s ({SIZE / took / 1e6:.2f} MB/s); "
        f"VmRSS first -> peak over {sampler.samples} samples: {peaks}"
    )
    assert answer == f"{SIZE} {sent.hexdigest()}\n".encode()
    assert took >= SIZE / RATE * 0.95  # the backend really was the bottleneck
    assert sampler.samples >= took / 0.5 * 0.8
    for name, peak in sampler.peak.items():
        assert peak < RSS_LIMIT, f"{name} VmRSS peaked at {peak / 1e6:.0f} MB"
