"""`kms-broker`: set up and run the broker (init, serve) and talk to it over HTTP (key, alias, encrypt, …)."""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from broker.cli_errors import CleanErrors, fail
from broker.client import BrokerClient

OUTPUT = click.option("--output", "output", type=click.Choice(["text", "json"]), default="text",
                      help="text for people, json for scripts")
DATA_DIR = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="data folder (default: $KMSB_DATA_DIR or ./var)")


def _data_dir(value: Path | None) -> Path:
    return Path(value or os.environ.get("KMSB_DATA_DIR") or "./var")


def _emit(output: str, data: Any, text: str | None = None) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(text if text is not None else _as_text(data))


def _as_text(data: Any) -> str:
    if isinstance(data, dict):
        return "\n".join(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in data.items())
    return str(data)


def _client() -> BrokerClient:
    return BrokerClient()


def _fail(message: str, code: int = 1) -> None:
    fail(message, code)


@click.group(cls=CleanErrors)
@click.version_option(package_name="kms-broker")
def main() -> None:
    """kms-broker: one KMS API over a PKCS#11 HSM and four clouds."""


# ------------------------------------------------------------------------------------------------ init / serve


@main.command()
@DATA_DIR
@click.option("--store-url", default=None, help="the store (default: SQLite in the data folder); a cluster's first "
              "node names its PostgreSQL database here")
@OUTPUT
def init(data_dir: Path | None, store_url: str | None, output: str) -> None:
    """Create the SoftHSM token, root KEK, store and settings in the data folder; print the root token once."""
    from broker.auth import TokenAuth
    from broker.settings import CONFIG_NAME, embedded_defaults, write_settings
    from broker.store import Store
    from providers.softhsm_token import create_token

    folder = _data_dir(data_dir).resolve()
    if (folder / CONFIG_NAME).exists() or (folder / "hsm").exists():
        _fail(f"{folder} is already initialised; nothing was changed")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    try:
        create_token(folder / "hsm")
    except (OSError, RuntimeError) as exc:
        _fail(f"cannot create the SoftHSM token ({type(exc).__name__}: is softhsm2 installed?)")
    raw = embedded_defaults(folder)
    if store_url:
        raw["store_url"] = store_url
    store = Store(raw["store_url"])
    store.migrate()
    token, accessor = TokenAuth(store).create("root", ["root"])
    store.dispose()
    write_settings(folder / CONFIG_NAME, raw)
    _emit(output, {"root_token": token, "accessor": accessor, "data_dir": str(folder)},
          f"Initialised {folder}\nRoot token (shown once, store it safely): {token}")


@main.command()
@DATA_DIR
@click.option("--bind", default="127.0.0.1:8200", show_default=True, help="HOST:PORT to listen on")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256))
@click.option("--keyring-bind", default=None, help="HOST:PORT of the keyring bridge listener (Vault KV for MySQL/MariaDB)")
@click.option("--keyring-cert", default=None, type=click.Path(exists=True, dir_okay=False),
              help="TLS certificate (PEM) of the keyring listener")
@click.option("--keyring-key", default=None, type=click.Path(exists=True, dir_okay=False),
              help="TLS private key (PEM) of the keyring listener")
@click.option("--cert", default=None, type=click.Path(exists=True, dir_okay=False),
              help="TLS certificate (PEM) of the API listener")
@click.option("--key", "key_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="TLS private key (PEM) of the API listener")
@click.option("--client-ca", default=None, type=click.Path(exists=True, dir_okay=False),
              help="mutual TLS: require API clients to present a certificate this CA (PEM) signed")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per log line, with the request id (docs/operations.md)")
@click.option("--with-stack", is_flag=True, help="add a provider for each cloud of the local stack that is up")
@click.option("--stack-dir", type=click.Path(path_type=Path), default=None,
              help="the local stack's state folder (default: $KMSB_STACK_DIR or ./var/stack)")
def serve(data_dir: Path | None, bind: str, workers: int, threads: int, keyring_bind: str | None,
          keyring_cert: str | None, keyring_key: str | None, cert: str | None, key_file: str | None,
          client_ca: str | None, log_format: str, with_stack: bool, stack_dir: Path | None) -> None:
    """Serve the API with gunicorn (never Flask's development server)."""
    from broker.settings import SettingsError, load_settings, with_providers
    from broker.wsgi import Tls, prepare_metrics, serve_forever

    try:
        settings = load_settings(_data_dir(data_dir))
        prepare_metrics(settings.data_dir)
        if with_stack:
            settings = with_providers(settings, _stack_providers(stack_dir))
        _check_providers(settings)
    except SettingsError as exc:
        _fail(str(exc))
    _migrate(settings)
    if bool(keyring_cert) != bool(keyring_key):
        _fail("--keyring-cert and --keyring-key go together")
    if (keyring_cert or keyring_key) and not keyring_bind:
        _fail("--keyring-cert/--keyring-key need --keyring-bind")
    if bool(cert) != bool(key_file):
        _fail("--cert and --key go together")
    if client_ca and not cert:
        _fail("--client-ca needs --cert and --key (mutual TLS is TLS first)")
    tls = Tls(cert, key_file, client_ca) if cert and key_file else None
    keyring = None
    if keyring_bind:
        keyring = {"bind": keyring_bind, "workers": workers, "threads": threads, "certfile": keyring_cert,
                   "keyfile": keyring_key}
    serve_forever(settings, bind=bind, workers=workers, threads=threads, keyring=keyring, tls=tls,
                  log_format=log_format)


def _migrate(settings) -> None:
    """Bring the store to the latest schema before serving (idempotent; data folders from older versions)."""
    from broker.store import Store

    store = Store(settings.store_url)
    try:
        store.migrate()
    finally:
        store.dispose()


def _check_providers(settings) -> None:
    """Build every provider once before forking workers, so a bad provider table is one clear error."""
    from broker.settings import SettingsError
    from providers.registry import UnknownProviderKind, build_provider

    for name, config in settings.providers.items():
        try:
            build_provider(name, config).close()
        except (UnknownProviderKind, ValueError, TypeError, KeyError) as exc:
            raise SettingsError(settings.redact(f"provider {name!r}: {exc}")) from None


def _stack_providers(stack_dir: Path | None) -> dict[str, dict]:
    """One provider per cloud the local stack runs, named after the cloud (its settings are provider configs)."""
    from kms_stack.stack import Stack

    clouds = Stack(stack_dir).env()
    if not clouds:
        _fail("the local stack is not up: run `kms-broker stack up` first")
    click.echo(f"providers from the local stack: {', '.join(sorted(clouds))}", err=True)
    return {cloud: {"kind": cloud, **config} for cloud, config in clouds.items()}


# ------------------------------------------------------------------------------------------------ keys


@main.group()
def key() -> None:
    """Create and manage keys (reads KMSB_ADDR and KMSB_TOKEN)."""


@key.command("create")
@click.option("--spec", default="SYMMETRIC_DEFAULT", show_default=True)
@click.option("--usage", default=None, help="ENCRYPT_DECRYPT | SIGN_VERIFY | GENERATE_VERIFY_MAC")
@click.option("--provider", default=None, help="provider instance name (default: the pkcs11 one)")
@click.option("--description", default="")
@click.option("--origin", type=click.Choice(["AWS_KMS", "EXTERNAL"]), default="AWS_KMS", show_default=True)
@OUTPUT
def key_create(spec: str, usage: str | None, provider: str | None, description: str, origin: str,
               output: str) -> None:
    meta = _client().create_key(spec, usage, description=description, provider=provider, origin=origin)
    _emit(output, meta, meta["KeyId"])


@key.command("list")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@OUTPUT
def key_list(limit: int, output: str) -> None:
    client, keys, marker = _client(), [], None
    while True:
        page = client.list_keys(limit, marker)
        keys.extend(page["Keys"])
        marker = page.get("NextMarker")
        if not page.get("Truncated"):
            break
    _emit(output, keys, "\n".join(f"{k['KeyId']}  {k['Provider']}" for k in keys))


@key.command("describe")
@click.argument("key_ref")
@OUTPUT
def key_describe(key_ref: str, output: str) -> None:
    _emit(output, _client().describe_key(key_ref))


@key.command("enable")
@click.argument("key_ref")
@OUTPUT
def key_enable(key_ref: str, output: str) -> None:
    _client().enable_key(key_ref)
    _emit(output, {"KeyId": key_ref, "KeyState": "Enabled"}, "enabled")


@key.command("disable")
@click.argument("key_ref")
@OUTPUT
def key_disable(key_ref: str, output: str) -> None:
    _client().disable_key(key_ref)
    _emit(output, {"KeyId": key_ref, "KeyState": "Disabled"}, "disabled")


@key.command("schedule-deletion")
@click.argument("key_ref")
@click.option("--days", default=30, show_default=True, type=int, help="waiting period, 7 to 30 days")
@OUTPUT
def key_schedule_deletion(key_ref: str, days: int, output: str) -> None:
    out = _client().schedule_key_deletion(key_ref, days)
    _emit(output, out, f"deletion scheduled for {out['DeletionDate']}")


@key.command("cancel-deletion")
@click.argument("key_ref")
@OUTPUT
def key_cancel_deletion(key_ref: str, output: str) -> None:
    _emit(output, _client().cancel_key_deletion(key_ref), "deletion cancelled; the key is disabled")


@key.command("rotate")
@click.argument("key_ref")
@OUTPUT
def key_rotate(key_ref: str, output: str) -> None:
    out = _client().rotate_key(key_ref)
    _emit(output, out, f"rotated: version {out['KeyVersion']} is now primary")


@key.command("versions")
@click.argument("key_ref")
@OUTPUT
def key_versions(key_ref: str, output: str) -> None:
    out = _client().list_key_versions(key_ref)
    _emit(output, out, "\n".join(f"v{v['KeyVersion']}  {v['State']}  {v['CreationDate']}" for v in out["Versions"]))


# ------------------------------------------------------------------------------------------------ aliases


@main.group()
def alias() -> None:
    """Aliases (alias/NAME) that point at keys."""


@alias.command("create")
@click.argument("name")
@click.argument("key_ref")
@OUTPUT
def alias_create(name: str, key_ref: str, output: str) -> None:
    name = name if name.startswith("alias/") else f"alias/{name}"
    _client().create_alias(name, key_ref)
    _emit(output, {"AliasName": name, "TargetKeyId": key_ref}, name)


@alias.command("list")
@click.option("--key", "key_ref", default=None)
@OUTPUT
def alias_list(key_ref: str | None, output: str) -> None:
    out = _client().list_aliases(key_ref)["Aliases"]
    _emit(output, out, "\n".join(f"{a['AliasName']}  {a['TargetKeyId']}" for a in out))


# ------------------------------------------------------------------------------------------------ crypto


def _context(pairs: tuple[str, ...]) -> dict[str, str]:
    context = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not k=v", param_hint="--context")
        context[name] = value
    return context


CONTEXT = click.option("--context", "context", multiple=True, help="encryption context entry k=v (repeatable)")


@main.command()
@click.option("--key", "key_ref", required=True, help="key id or alias/name")
@CONTEXT
@OUTPUT
def encrypt(key_ref: str, context: tuple[str, ...], output: str) -> None:
    """Encrypt stdin (at most 4096 bytes); print the ciphertext as base64."""
    plaintext = sys.stdin.buffer.read()
    blob = _client().encrypt(key_ref, plaintext, _context(context))
    encoded = base64.b64encode(blob).decode()
    _emit(output, {"CiphertextBlob": encoded}, encoded)


@main.command()
@CONTEXT
@OUTPUT
def decrypt(context: tuple[str, ...], output: str) -> None:
    """Decrypt a base64 ciphertext from stdin; write the plaintext to stdout."""
    try:
        blob = base64.b64decode(sys.stdin.read().strip(), validate=True)
    except (binascii.Error, ValueError):
        _fail("stdin is not base64", 2)
    plaintext = _client().decrypt(blob, _context(context))
    if output == "json":
        _emit(output, {"Plaintext": base64.b64encode(plaintext).decode()})
    else:
        sys.stdout.buffer.write(plaintext)


# Command groups that live beside the core: (module, click group attribute).
_GROUPS = [
    ("kms_stack.cli", "stack"),                    # the local cloud stack
    ("broker.cli_aws", "aws_credentials"),         # SigV4 credentials of the AWS-compatible front door
    ("keyring_bridge.cli", "keyring"),             # the MySQL keyring bridge
    ("broker.cli_admin", "admin_groups"),          # tokens, policies, audit (a list of groups)
    ("broker.cli_sync", "sync"),                   # declarative keys across providers (docs/sync.md)
    ("broker.cli_approval", "approval"),           # quorum-approved operations
    ("broker.cli_backup", "backup"),               # backup custodians|create|verify|restore
    ("broker.cli_node", "node"),                   # node join|list|remove
    ("broker.cli_files", "commands"),              # client-side envelope encryption of files (docs/envelope.md)
    ("broker.cli_jobs", "jobs"),                   # background jobs, leased across the cluster
]


def _mount_optional_groups() -> None:
    import importlib
    import importlib.util

    for module_name, attribute in _GROUPS:
        try:
            found = importlib.util.find_spec(module_name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            continue
        group = getattr(importlib.import_module(module_name), attribute)
        for command in group if isinstance(group, list) else [group]:
            main.add_command(command)


_mount_optional_groups()


if __name__ == "__main__":
    main()
