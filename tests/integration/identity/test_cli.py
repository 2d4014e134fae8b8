"""`kms-broker token …` and `kms-broker login …` as subprocesses against the real broker. Secrets never in argv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CLI = [sys.executable, "-m", "broker.cli"]


def run(ib, *args, token: str | None = None, stdin: str = "", env: dict | None = None):
    e = {**os.environ, "KMSB_ADDR": ib.addr, **(env or {})}
    e.pop("KMSB_TOKEN", None)
    if token:
        e["KMSB_TOKEN"] = token
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, env=e, timeout=60)


def test_token_create_lookup_revoke(ib):
    out = run(ib, "token", "create", "--policy", "key-user", "--ttl", "1h", "--meta", "team=blue",
              "--output", "json", token=ib.root_token)
    assert out.returncode == 0, out.stderr
    auth = json.loads(out.stdout)["auth"]
    assert auth["policies"] == ["key-user"] and auth["metadata"] == {"team": "blue"}
    out = run(ib, "token", "lookup", "--output", "json", token=auth["client_token"])
    assert out.returncode == 0 and json.loads(out.stdout)["meta"] == {"team": "blue"}
    out = run(ib, "token", "lookup", "--accessor", auth["accessor"], token=ib.root_token)
    assert out.returncode == 0 and "key-user" in out.stdout
    out = run(ib, "token", "revoke", "--accessor", auth["accessor"], token=ib.root_token)
    assert out.returncode == 0 and "revoked: 1" in out.stdout
    revoked_at = time.monotonic()
    while True:  # another worker may still hold the token for auth_cache_seconds (1 s): never a success meanwhile
        out = run(ib, "token", "lookup", token=auth["client_token"])
        assert out.returncode == 1, out.stdout
        if "UnrecognizedClientException" in out.stderr:
            break
        assert time.monotonic() - revoked_at < 1.0 + 0.5, out.stderr  # the documented bound, and some slack
        time.sleep(0.1)


def test_token_text_output_and_errors(ib):
    out = run(ib, "token", "create", "--policy", "x", token=ib.root_token)
    assert out.returncode == 0 and out.stdout.startswith("token: kmsb.")
    out = run(ib, "token", "create", "--ttl", "soon", token=ib.root_token)
    assert out.returncode == 1 and "ValidationException" in out.stderr
    out = run(ib, "token", "create")
    assert out.returncode == 1 and "UnrecognizedClientException" in out.stderr


def test_login_jwt_reads_the_token_from_stdin(ib, keys):
    token = keys.sign_rsa()
    out = run(ib, "login", "jwt", "--role", "ci", "--output", "json", stdin=token)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["auth"]["metadata"]["repo"] == "org/app"
    out = run(ib, "login", "jwt", "--role", "ci", stdin=keys.sign_rsa(keys.claims(aud="x")))
    assert out.returncode == 1 and "UnrecognizedClientException" in out.stderr


def test_login_ldap_reads_the_password_from_env_or_prompt(ib):
    out = run(ib, "login", "ldap", "--username", "bob", "--output", "json", env={"KMSB_LDAP_PASSWORD": "bob-pw"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["auth"]["policies"] == ["key-user"]
    out = run(ib, "login", "ldap", "--username", "bob", stdin="bob-pw\n")  # the hidden prompt reads stdin
    assert out.returncode == 0, out.stderr
    assert "bob-pw" not in out.stdout + out.stderr
    out = run(ib, "login", "ldap", "--username", "bob", env={"KMSB_LDAP_PASSWORD": "wrong"})
    assert out.returncode == 1 and "UnrecognizedClientException" in out.stderr


def test_no_password_option_exists():
    out = subprocess.run([*CLI, "login", "ldap", "--help"], capture_output=True, text=True)
    assert "--password" not in out.stdout
    out = subprocess.run([*CLI, "login", "jwt", "--help"], capture_output=True, text=True)
    assert "--jwt" not in out.stdout
