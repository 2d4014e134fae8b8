"""Client threads doing Encrypt / Decrypt / GenerateDataKey through a BrokerClient, remembering every acknowledged
answer (its request id, ciphertext, plaintext and context) so a test can check afterwards that none was lost."""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass, field

from broker.client import BrokerClient, BrokerClientError


class TracedClient(BrokerClient):
    """Sends its own request id with each call (kept by the broker in the audit record), the same on retries."""

    def call(self, method, path, body=None, params=None):
        self.last_request_id = uuid.uuid4().hex
        self._session.headers["X-Request-Id"] = self.last_request_id
        return super().call(method, path, body, params)


@dataclass
class Ack:
    request_id: str
    blob: bytes
    plaintext: bytes
    context: dict[str, str]


@dataclass
class Load:
    addr: str | list[str]
    token: str
    key_id: str
    threads: int = 4
    acks: list[Ack] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)  # what the app saw, after the client's retries
    ops: list[int] = field(default_factory=list)
    clients: list[TracedClient] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        self.ops = [0] * self.threads
        for i in range(self.threads):
            client = TracedClient(self.addr, self.token, retries=6, backoff=0.2, timeout=30)
            self.clients.append(client)
            t = threading.Thread(target=self._run, args=(i, client), daemon=True, name=f"load-{i}")
            t.start()
            self._threads.append(t)
        return self

    def _run(self, i: int, client: TracedClient) -> None:
        mine: list[Ack] = []
        n = 0
        while not self._stop.is_set():
            context = {"thread": str(i), "n": str(n)}
            try:
                if n % 3 == 0:
                    plaintext = os.urandom(24)
                    blob = client.encrypt(self.key_id, plaintext, context)
                    mine.append(Ack(client.last_request_id, blob, plaintext, context))
                elif n % 3 == 1:
                    plaintext, blob = client.generate_data_key(self.key_id, context=context)
                    mine.append(Ack(client.last_request_id, blob, plaintext, context))
                else:
                    ack = mine[-1]
                    assert client.decrypt(ack.blob, ack.context) == ack.plaintext
                    mine.append(Ack(client.last_request_id, ack.blob, ack.plaintext, ack.context))
            except BrokerClientError as exc:
                with self._lock:
                    self.errors.append((exc.status, exc.code))
                time.sleep(0.2)
            else:
                self.ops[i] += 1
            n += 1
        with self._lock:
            self.acks.extend(mine)

    def wait_for(self, more_ops: int, timeout: float = 300) -> None:
        """Until every thread has done `more_ops` more successful operations (a bound on waiting, not a check)."""
        target = [o + more_ops for o in self.ops]
        deadline = time.monotonic() + timeout
        while any(o < t for o, t in zip(self.ops, target, strict=True)) and time.monotonic() < deadline:
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)

    @property
    def retried(self) -> int:
        return sum(c.retried for c in self.clients)
