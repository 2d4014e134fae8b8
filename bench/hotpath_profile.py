"""Where a hot-path request's CPU goes, without HTTP or the machine's load in the way.

    python bench/hotpath_profile.py [--requests 3000] [--profile encrypt|decrypt|gdk|aws|aws-decrypt|aws-gdk|keyring] [--top 40]
                                    [--steps encrypt|decrypt|gdk|aws|aws-decrypt|aws-gdk|keyring] [--rounds 15]

Builds the broker's Flask apps in this process over a fresh data folder (SQLite + SoftHSM, audit on with fsync),
and calls each app's WSGI callable directly with a prebuilt request, one after another. It prints the CPU time
per request of the whole process (the audit writer's thread included) and the wall time, beside a bare Flask JSON
no-op called the same way: CPU per request is what the HTTP benchmark's throughput is made of on a busy machine,
and it barely moves with the load. `--profile OP` adds a cProfile of that row (sorted by own time); cProfile
inflates call-heavy code (SQLAlchemy, Flask) several times over, so `--steps OP` measures the same steps instead with
one thread-CPU timer around each (inclusive microseconds per request, about 1 us of overhead per step): the numbers
to decide on.

`--rounds N` measures the rows in N interleaved rounds of --requests calls each and prints the medians, beside the
thread CPU spent outside `Gate.run` (the front door's own share: authentication, parsing, rendering), which the
audit's fsync and the machine's load barely touch: the figures to compare two doors or two versions by.

`--instructions ROW` runs ROW's --requests calls inside `functools.reduce`, for callgrind to count the instructions
of those calls only (noise-free on a shared machine; the auth caches are kept for 60 s so that valgrind's slowness
does not refresh them), and `--door-only` has the gate answer every call with its last answer, marked audited, so
that only the front door's own work is counted:

    valgrind --tool=callgrind --callgrind-out-file=cg.out --collect-atstart=no --toggle-collect=functools_reduce \
        python3.11 bench/hotpath_profile.py --instructions aws --door-only --requests 200
    callgrind_annotate cg.out | grep 'PROGRAM TOTALS'     # divided by --requests: instructions per request

Sequential calls mean every audit batch holds one record: the group-commit savings of a loaded server do not
show here, every other cost does.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONTEXT = {"app": "bench", "tenant": "t-0001"}


def environ(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Callable[[], dict]:
    """A fresh WSGI environ per call (the body stream is consumed by each request)."""
    base = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8200", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
            "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.multithread": True,
            "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0), "CONTENT_LENGTH": str(len(body))}
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        base[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value

    def make() -> dict:
        env = dict(base)
        env["wsgi.input"] = io.BytesIO(body)
        return env
    return make


def call(app: Callable, make: Callable[[], dict]) -> bytes:
    status: list[str] = []
    out = b"".join(app(make(), lambda s, h, e=None: status.append(s)))
    if not status[0].startswith("200"):
        raise SystemExit(f"{status[0]}: {out[:300]!r}")
    return out


def measure(app: Callable, make: Callable[[], dict], n: int) -> tuple[float, float]:
    for _ in range(min(300, n)):
        call(app, make)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        call(app, make)
    return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6


PARTS = [  # (label, file suffix, function): inclusive thread-CPU of the steps of a request
    ("whole request (WSGI call)", "flask/app.py", "wsgi_app"),
    ("  before_request: authenticate", "broker/app.py", "authenticate"),
    ("  body parse (native)", "api/native.py", "parse"),
    ("  gate: Gate.run", "broker/gate.py", "run"),
    ("    resolve key", "broker/gate.py", "resolve"),
    ("    decrypt: resolve from ciphertext", "broker/service.py", "_ciphertext_key"),
    ("    policy decision", "broker/gate.py", "decide"),
    ("    KeyService body: encrypt", "broker/service.py", "encrypt"),
    ("    KeyService body: decrypt", "broker/service.py", "decrypt"),
    ("    KeyService body: generate_data_key", "broker/service.py", "generate_data_key"),
    ("      HSM calls", "providers/pkcs11.py", "_call"),
    ("    audit record (Gate._write)", "broker/gate.py", "_write"),
    ("      HMAC of context values", "broker/audit/log.py", "hmac_value"),
    ("      AuditLog.write", "broker/audit/log.py", "write"),
    ("        commit (chain, sinks)", "broker/audit/log.py", "_commit"),
    ("          store copy insert", "broker/audit/sinks.py", "write"),
    ("          fsync", "broker/audit/sinks.py", "sync"),
    ("  render JSON (_jsonable+response)", "flask/app.py", "make_response"),
    ("  AWS: SigV4 verify", "auth/sigv4.py", "verify"),
    ("  keyring: KeyringService.read", "keyring_bridge/keyring.py", "read"),
]


STEPS = [  # (module, class, attribute, label): timed by wrapping the attribute with a thread-CPU accumulator
    ("flask", "Flask", "preprocess_request", "  before_request (authenticate)"),
    ("broker.api.native", None, "parse", "  body parse (native)"),
    ("broker.gate", "Gate", "run", "  gate: Gate.run"),
    ("broker.service", "KeyService", "resolve_key", "    resolve key"),
    ("broker.gate", "Gate", "decide", "    policy decisions"),
    ("broker.audit.log", "AuditLog", "precheck", "    audit precheck"),
    ("providers.pkcs11", "Pkcs11Provider", "_call", "    HSM calls (all)"),
    ("broker.gate", "Gate", "_write", "    audit record (Gate._write)"),
    ("broker.audit.log", "AuditLog", "hmac_value", "      HMACs through the HSM"),
    ("broker.audit.log", "AuditLog", "write", "      AuditLog.write"),
    ("broker.audit.log", "AuditLog", "_commit", "        commit (lock, chain, sinks)"),
    ("broker.audit.sinks", "FileSink", "write", "          file append"),
    ("broker.audit.sinks", "StoreSink", "write", "          store copy insert"),
    ("broker.audit.sinks", "FileSink", "sync", "          fsync"),
    ("flask", "Flask", "finalize_request", "  finalize (render + after_request)"),
    ("broker.auth.sigv4", "SigV4Verifier", "verify", "  AWS: SigV4 verify"),
    ("keyring_bridge.keyring", "KeyringService", "read", "  keyring: KeyringService.read"),
    ("keyring_bridge.keyring", "KeyringService", "authenticate", "    keyring: token check"),
    ("keyring_bridge.repository", "KeyringRepository", "read", "    keyring: entry + version row"),
    ("keyring_bridge.keyring", "KeyringService", "_unseal", "    keyring: unseal (HSM)"),
]


def rounds(rows: dict[str, tuple[Callable, Callable[[], dict]]], wanted: list[str], n: int, count: int) -> str:
    """Median process CPU, thread CPU and thread CPU outside Gate.run per request of each row, over `count` rounds
    that measure the rows one after another (so that a change in the machine's load falls on every row alike)."""
    import statistics

    from broker.gate import Gate

    inside = [0.0]
    real = Gate.run

    def timed(*a: Any, **k: Any) -> Any:
        started = time.thread_time()
        try:
            return real(*a, **k)
        finally:
            inside[0] += time.thread_time() - started
    Gate.run = timed  # type: ignore[method-assign]
    seen: dict[str, list[tuple[float, float, float]]] = {name: [] for name in wanted}
    try:
        for name in wanted:
            for _ in range(min(300, n)):
                call(*rows[name])
        for _ in range(count):
            for name in wanted:
                fn, make = rows[name]
                inside[0] = 0.0
                cpu, thread = time.process_time(), time.thread_time()
                for _ in range(n):
                    call(fn, make)
                thread = time.thread_time() - thread
                seen[name].append(((time.process_time() - cpu) / n * 1e6, thread / n * 1e6,
                                   (thread - inside[0]) / n * 1e6))
    finally:
        Gate.run = real  # type: ignore[method-assign]
    lines = [f"{'row (medians of ' + str(count) + ' rounds)':<28}{'CPU us/req':>12}{'thread us/req':>15}"
             f"{'outside the gate':>18}"]
    for name in wanted:
        cpu, thread, door = (statistics.median(column) for column in zip(*seen[name], strict=True))
        lines.append(f"{name:<28}{cpu:>12.0f}{thread:>15.0f}{door:>18.1f}")
    return "\n".join(lines)


def instructions(fn: Callable, make: Callable[[], dict], n: int, door_only: bool) -> str:
    """Run `n` calls inside functools.reduce (what callgrind's --toggle-collect=functools_reduce counts)."""
    import functools

    from broker.gate import Gate

    for _ in range(min(300, n)):
        call(fn, make)
    real = Gate.run
    if door_only:
        answers: dict[str, Any] = {}

        def answered(self: Any, decl: Any, host: Any, op: Callable, ctx: Any, args: tuple, kwargs: dict) -> Any:
            if decl.qualname not in answers:
                answers[decl.qualname] = real(self, decl, host, op, ctx, args, kwargs)
            ctx.audited = True
            return answers[decl.qualname]
        Gate.run = answered  # type: ignore[method-assign]
        for _ in range(50):
            call(fn, make)
    try:
        functools.reduce(lambda _acc, _i: call(fn, make), range(n), None)
    finally:
        Gate.run = real  # type: ignore[method-assign]
    return f"{n} requests counted{' (door only: the gate answered its last answer)' if door_only else ''}"


def steps(fn: Callable, make: Callable[[], dict], n: int) -> str:
    """Inclusive thread-CPU per request of each step in STEPS (steps never reached are left out)."""
    import importlib

    spent: dict[str, float] = dict.fromkeys([label for *_, label in STEPS], 0.0)
    undo: list[tuple[Any, str, Any]] = []
    for module, cls, name, label in STEPS:
        try:
            owner = importlib.import_module(module)
        except ImportError:
            continue
        owner = getattr(owner, cls) if cls else owner
        if not hasattr(owner, name):
            continue
        real = owner.__dict__[name] if cls else getattr(owner, name)

        def timed(*a: Any, _real: Any = real, _label: str = label, **k: Any) -> Any:
            started = time.thread_time()
            try:
                return _real(*a, **k)
            finally:
                spent[_label] += time.thread_time() - started
        undo.append((owner, name, real))
        setattr(owner, name, timed)
    try:
        for _ in range(min(300, n)):
            call(fn, make)
        spent.update(dict.fromkeys(spent, 0.0))
        for _ in range(n):
            call(fn, make)
    finally:
        for owner, name, real in undo:
            setattr(owner, name, real)
    lines = [f"{'step (thread CPU, us/request, inclusive)':<44}{'us':>8}"]
    lines += [f"{label:<44}{total / n * 1e6:>8.0f}" for label, total in spent.items() if total]
    return "\n".join(lines)


def breakdown(stats: pstats.Stats, n: int) -> str:
    """Inclusive CPU per request of each step (a step that recurses or repeats is summed once per call)."""
    lines = [f"{'step (profiled thread CPU, us/request)':<44}{'us':>8}"]
    for label, suffix, name in PARTS:
        total = sum(ct for (file, _line, fn), (_cc, _nc, _tt, ct, _callers) in stats.stats.items()  # type: ignore[attr-defined]
                    if fn == name and file.endswith(suffix))
        if total:
            lines.append(f"{label:<44}{total / n * 1e6:>8.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--steps", default=None, help="row whose steps to time (thread CPU per step, inclusive)")
    parser.add_argument("--instructions", default=None, help="row to run inside functools.reduce, for callgrind")
    parser.add_argument("--door-only", action="store_true", help="with --instructions: the gate answers at once")
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds of --requests calls per row")
    parser.add_argument("--only", default=None, help="comma-separated rows (noop,encrypt,decrypt,gdk,aws,aws-decrypt,aws-gdk,keyring)")
    args = parser.parse_args()

    from bench.http_bench import sigv4
    from bench.noop_server import create_noop_app
    from broker.app import create_app
    from broker.settings import load_settings
    from keyring_bridge.vault_app import create_bridge_app

    with tempfile.TemporaryDirectory(prefix="kmsb-hotpath-") as tmp:
        data = Path(tmp) / "data"
        init = subprocess.run([sys.executable, "-m", "broker.cli", "init", "--data-dir", str(data), "--output", "json"],
                              check=True, capture_output=True, text=True)
        root = json.loads(init.stdout)["root_token"]
        if args.instructions:  # valgrind is ~50x slower: the 1 s auth caches would refresh every few requests
            os.environ["KMSB_AUTH_CACHE_SECONDS"] = "60"
        settings = load_settings(data)
        app = create_app(settings)
        client = app.test_client()
        admin = {"X-KMSB-Token": root}
        key = client.post("/v1/keys", json={}, headers=admin).get_json()["KeyMetadata"]["KeyId"]
        client.put("/v1/policies/bench-app", headers=admin, json={"Document": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"],
             "Resource": f"key/{key}"}]}})
        token = client.post("/v1/auth/token/create", headers=admin,
                            json={"policies": ["bench-app"]}).get_json()["auth"]["client_token"]
        creds = client.post("/v1/aws-credentials", headers=admin, json={"Policies": ["bench-app"]}).get_json()
        bridge = create_bridge_app(settings, service=app.extensions["kms_service"])
        keyring = app.extensions["kms"].keyring
        from broker.app import SYSTEM
        from broker.service import RequestContext
        keyring.create(RequestContext(SYSTEM), "kv/bench", "1")
        db_token = keyring.create_token(RequestContext(SYSTEM), "kv/bench").token
        hdr = {"Content-Type": "application/json", "X-KMSB-Token": token}
        plaintext = base64.b64encode(b"x" * 64).decode()
        enc = json.dumps({"Plaintext": plaintext, "EncryptionContext": CONTEXT}).encode()
        blob = client.post(f"/v1/keys/{key}/encrypt", data=enc, headers=hdr).get_json()["CiphertextBlob"]
        dec = json.dumps({"CiphertextBlob": blob, "EncryptionContext": CONTEXT}).encode()
        gdk = json.dumps({"KeySpec": "AES_256", "EncryptionContext": CONTEXT}).encode()
        aws_headers, aws_body = sigv4("http://127.0.0.1:8200/", creds["access_key_id"], creds["secret_access_key"],
                                      "Encrypt", {"KeyId": key, "Plaintext": plaintext, "EncryptionContext": CONTEXT})
        rows: dict[str, tuple[Callable, Callable[[], dict]]] = {
            "noop": (create_noop_app().wsgi_app, environ("POST", "/v1/noop", {"Content-Type": "application/json"},
                                                         enc)),
            "encrypt": (app.wsgi_app, environ("POST", f"/v1/keys/{key}/encrypt", hdr, enc)),
            "decrypt": (app.wsgi_app, environ("POST", "/v1/decrypt", hdr, dec)),
            "gdk": (app.wsgi_app, environ("POST", f"/v1/keys/{key}/generate-data-key", hdr, gdk)),
            "aws": (app.wsgi_app, environ("POST", "/", {**aws_headers, "Host": "127.0.0.1:8200"}, aws_body)),
        }
        for row, operation, body in (("aws-decrypt", "Decrypt", {"CiphertextBlob": blob, "EncryptionContext": CONTEXT}),
                                     ("aws-gdk", "GenerateDataKey", {"KeyId": key, "KeySpec": "AES_256",
                                                                     "EncryptionContext": CONTEXT})):
            signed, signed_body = sigv4("http://127.0.0.1:8200/", creds["access_key_id"], creds["secret_access_key"],
                                        operation, body)
            rows[row] = (app.wsgi_app, environ("POST", "/", {**signed, "Host": "127.0.0.1:8200"}, signed_body))
        rows["keyring"] = (bridge.wsgi_app, environ("GET", "/v1/kv/bench/data/1", {"X-Vault-Token": db_token}))
        wanted = args.only.split(",") if args.only else list(rows)
        if args.instructions:
            print(instructions(*rows[args.instructions], args.requests, args.door_only))
        elif args.rounds:
            print(rounds(rows, wanted, args.requests, args.rounds))
        else:
            print(f"{'row':<10}{'CPU us/req':>12}{'wall us/req':>13}")
            for name in wanted:
                fn, make = rows[name]
                cpu, wall = measure(fn, make, args.requests)
                print(f"{name:<10}{cpu:>12.0f}{wall:>13.0f}")
        if args.steps:
            print(steps(*rows[args.steps], args.requests))
        if args.profile:
            fn, make = rows[args.profile]
            profile = cProfile.Profile(time.thread_time)  # CPU of this thread: waits do not count
            profile.enable()
            for _ in range(args.requests):
                call(fn, make)
            profile.disable()
            out = io.StringIO()
            stats = pstats.Stats(profile, stream=out)
            print(breakdown(stats, args.requests))
            stats.sort_stats("tottime").print_stats(args.top)
            print(out.getvalue())
        app.extensions["kms_service"].audit.close()


if __name__ == "__main__":
    main()
