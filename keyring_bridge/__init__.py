"""MySQL/MariaDB keyring bridge: a Vault-KV-compatible front door (its own listener) over the broker's KeyService.

Modules: keyring (entries, versions, sealing, the choke point), vault_app (the wire protocol, drop-don't-5xx),
approle (minimal AppRole), server (the bridge's gunicorn arbiter), admin_routes (native API), cli (`kms-broker
keyring`), formats (key files in and out). Guide: docs/keyring-bridge.md.
"""
