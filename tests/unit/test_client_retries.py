"""BrokerClient against small HTTP servers of its own: several addresses, retry-safe calls retried on connection
failures and 502/503/504 (on the next address), state-changing calls never sent twice."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from broker.client import BrokerClient, BrokerClientError, retry_safe
from tests.support.procs import free_port


class _Node:
    """Answers each request with the next status of `script` (then 200s), counting what it saw."""

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.seen: list[tuple[str, str]] = []
        node = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                node.seen.append((self.command, self.path))
                status = node.script.pop(0) if node.script else 200
                body = json.dumps({"CiphertextBlob": "aGk=", "Plaintext": "aGk=", "KeyMetadata": {"KeyId": "k"}}
                                  if status == 200 else {"error": {"code": "ServiceUnavailableException",
                                                                   "message": "down", "request_id": "r"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def nodes():
    made: list[_Node] = []

    def make(script: list[int]) -> _Node:
        made.append(_Node(script))
        return made[-1]

    yield make
    for n in made:
        n.close()


def test_retry_safe_calls_move_to_the_next_address(nodes):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    busy, good = nodes([503, 503, 503, 503]), nodes([])
    client = BrokerClient([down, busy.addr, good.addr], token="t", backoff=0)
    assert client.encrypt("k", b"x") == b"hi"
    assert client.retried == 2 and len(busy.seen) == 1 and len(good.seen) == 1
    assert client.decrypt(b"blob") == b"hi"  # stays on the address that answered
    assert len(good.seen) == 2


def test_retries_are_bounded_and_the_last_error_is_raised(nodes):
    busy = nodes([503] * 10)
    client = BrokerClient(busy.addr, token="t", retries=2, backoff=0)
    with pytest.raises(BrokerClientError) as err:
        client.decrypt(b"blob")
    assert err.value.status == 503 and len(busy.seen) == 3


def test_state_changing_calls_are_never_sent_twice(nodes):
    busy, good = nodes([502]), nodes([])
    client = BrokerClient(f"{busy.addr},{good.addr}", token="t", backoff=0)  # KMSB_ADDR's comma form
    with pytest.raises(BrokerClientError) as err:
        client.create_key()
    assert err.value.status == 502 and len(busy.seen) == 1 and good.seen == []


def test_which_calls_are_retry_safe():
    assert retry_safe("GET", "/keys")
    for path in ("/keys/alias/a/encrypt", "/decrypt", "/keys/k/generate-data-key", "/re-encrypt", "/keys/k/sign",
                 "/multikeys/decrypt"):
        assert retry_safe("POST", path), path
    for method, path in (("POST", "/keys"), ("POST", "/keys/k/rotate"), ("DELETE", "/keys/k"),
                         ("POST", "/auth/token/create"), ("PUT", "/policies/p")):
        assert not retry_safe(method, path), path
