"""A TCP proxy on 127.0.0.1 in front of a real server, for faults an official SDK meets on the wire.

It forwards bytes both ways untouched (HTTP/1.1, HTTP/2 and gRPC alike) until a rule meets a request: a rule is
armed with a byte marker that only the wanted request carries in clear (an HTTP header such as
``X-Amz-Target: TrentService.CreateKey``, a string field of a protobuf request) and fires once on the first
connection whose client side sends it:

- `lose_answer(marker)`: the request reaches the server, which does the work and answers; the answer is thrown
  away and the connection is cut, as when a response is lost on the network. The client sees a dropped
  connection; an SDK that retries sends the same request again, on a new connection, through this proxy.
- `hold(marker)`: the request is kept here, not sent, until `release()`; then it is sent on a new connection
  and its answer read and thrown away (the client may be gone by then: a request the server finishes after the
  client died).

`watch(marker)` counts every request that carries a marker (`seen`): how many times an SDK sent it.

`WireProxy(upstream, tls=TlsEnds(...))` fronts a TLS server (the Azure emulator): it terminates the client's TLS
with the server's own certificate and speaks TLS to the server, so markers are matched in clear (`lose_answer`
only).
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class _Rule:
    marker: bytes
    mode: str  # lose | hold
    fired: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)  # the server's answer arrived (and was lost)
    released: threading.Event = field(default_factory=threading.Event)
    held: bytearray = field(default_factory=bytearray)  # what a held request's client sent so far

    def held_http_request(self) -> bool:
        """A whole HTTP/1.1 request is held (headers and a Content-Length body): the client may die now."""
        head, sep, body = bytes(self.held).partition(b"\r\n\r\n")
        if not sep:
            return False
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        return len(body) >= length


@dataclass(frozen=True)
class TlsEnds:
    """The server's certificate and key (presented to clients) and the CA that signed it (to trust the server)."""

    cert: Path
    key: Path
    ca: Path

    def server_side(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_side(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


class WireProxy:
    """`address` forwards to `upstream`; at most one rule is armed at a time."""

    def __init__(self, upstream: tuple[str, int], *, tls: TlsEnds | None = None) -> None:
        self.upstream = upstream
        self._tls = (tls.server_side(), tls.client_side()) if tls is not None else None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._rule: _Rule | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._socks: list[socket.socket] = []
        self._watched: dict[bytes, int] = {}
        threading.Thread(target=self._accept, name="wire-proxy", daemon=True).start()

    # ---------------------------------------------------------------------------------------------- rules

    def lose_answer(self, marker: bytes) -> _Rule:
        return self._arm(_Rule(marker, "lose"))

    def hold(self, marker: bytes) -> _Rule:
        return self._arm(_Rule(marker, "hold"))

    def watch(self, marker: bytes) -> None:
        with self._lock:
            self._watched.setdefault(marker, 0)

    def seen(self, marker: bytes) -> int:
        with self._lock:
            return self._watched.get(marker, 0)

    def _count(self, tail: bytes, data: bytes) -> None:
        with self._lock:
            for marker in self._watched:
                self._watched[marker] += (tail + data).count(marker) - tail.count(marker)

    def release(self, rule: _Rule) -> None:
        rule.released.set()

    def _arm(self, rule: _Rule) -> _Rule:
        with self._lock:
            self._rule = rule
        return rule

    def _take(self, seen: bytes) -> _Rule | None:
        """The armed rule, disarmed, when `seen` carries its marker."""
        with self._lock:
            rule = self._rule
            if rule is None or rule.marker not in seen:
                return None
            self._rule = None
            rule.fired.set()
            return rule

    # ------------------------------------------------------------------------------------------- plumbing

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _close(s)

    def __enter__(self) -> WireProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            serve = self._serve if self._tls is None else self._serve_tls
            threading.Thread(target=serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._socks += [client, server]
        lost = threading.Event()  # set: the server's bytes are thrown away from now on
        held = threading.Event()  # set: the client's side belongs to a held request (kept open)
        rule_box: list[_Rule] = []
        threading.Thread(target=self._down, args=(server, client, lost, held, rule_box), daemon=True).start()
        tail = b""
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if self._watched:
                self._count(tail, data)
            rule = self._take(tail + data) if not rule_box else None
            tail = (tail + data)[-256:]
            if rule is not None and rule.mode == "hold":
                held.set()
                self._held(client, server, data, rule)
                return
            if rule is not None:
                rule_box.append(rule)
                lost.set()
            try:
                server.sendall(data)
            except OSError:
                break
        _close(client)
        _close(server)

    def _down(self, server: socket.socket, client: socket.socket, lost: threading.Event, held: threading.Event,
              rule_box: list[_Rule]) -> None:
        """Server -> client; once the answer is to be lost, the first bytes after it (the answer) are dropped and,
        when the server has been quiet a moment (the rest of the answer), both sides are cut."""
        while True:
            try:
                data = server.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if not lost.is_set():
                try:
                    client.sendall(data)
                except OSError:
                    break
                continue
            server.settimeout(0.3)
            try:
                while server.recv(65536):
                    pass
            except (TimeoutError, OSError):
                pass
            rule_box[0].answered.set()
            break
        if not held.is_set():
            _close(client)
        _close(server)

    def _serve_tls(self, raw: socket.socket) -> None:
        """Both TLS ends on one thread (an SSL socket must not be read and written from two threads): bytes are
        forwarded both ways as in `_serve`; once a `lose` rule fired, the server's answer is read into the void
        and, when the server has been quiet a moment after it, both sides are cut."""
        assert self._tls is not None
        try:
            raw.settimeout(10)
            client = self._tls[0].wrap_socket(raw, server_side=True)
            server = self._tls[1].wrap_socket(socket.create_connection(self.upstream, timeout=10),
                                              server_hostname=self.upstream[0])
        except (OSError, ssl.SSLError):
            _close(raw)
            return
        with self._lock:
            self._socks += [client, server]
        client.setblocking(False)  # a readable TLS socket may hold no application data (a session ticket)
        server.setblocking(False)
        tail, rule, answering = b"", None, False
        try:
            while True:
                ready = [s for s in (client, server) if s.pending()]
                if not ready:
                    ready = select.select([client, server], [], [], 0.3 if answering else 30)[0]
                if not ready and not answering:
                    continue
                if not ready:  # the answer is over: lost
                    assert rule is not None
                    rule.answered.set()
                    return
                for sock in ready:
                    try:
                        data = sock.recv(65536)
                    except ssl.SSLWantReadError:
                        continue
                    if not data:
                        if rule is not None and answering:
                            rule.answered.set()
                        return
                    if sock is client:
                        if self._watched:
                            self._count(tail, data)
                        if rule is None:
                            rule = self._take(tail + data)
                            if rule is not None and rule.mode != "lose":
                                raise AssertionError("a TLS proxy only loses answers")
                        tail = (tail + data)[-256:]
                        _send_all(server, data)
                    elif rule is None:
                        _send_all(client, data)
                    else:
                        answering = True
        except (OSError, ssl.SSLError):
            return
        finally:
            _close(client)
            _close(server)

    def _held(self, client: socket.socket, server: socket.socket, first: bytes, rule: _Rule) -> None:
        """Keep the request (and whatever follows it on the connection) until released, then send it and read
        its answer into the void. The client's side is read meanwhile, so its death does not reach the server."""
        _close(server)  # idle until released: the server may drop an idle connection meanwhile; a fresh one then
        buf = rule.held
        buf += first
        client.settimeout(0.05)
        while not rule.released.is_set():
            try:
                data = client.recv(65536)
                if data:
                    buf += data
                else:
                    time.sleep(0.05)
            except TimeoutError:
                continue
            except OSError:
                time.sleep(0.05)
        _close(client)
        try:
            server = socket.create_connection(self.upstream)
            server.sendall(bytes(buf))
            server.settimeout(30)
            server.recv(65536)  # the answer: the server did the work
            rule.answered.set()
        except OSError:
            pass
        _close(server)


def _send_all(sock: socket.socket, data: bytes) -> None:
    """sendall for a non-blocking TLS socket."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            select.select([], [sock], [], 1)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


__all__ = ["TlsEnds", "WireProxy"]
