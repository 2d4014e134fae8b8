"""MySQL/MariaDB keyring bridge: a Vault-KV-compatible front door (its own listener) over the broker's gate.

Modules: keyring (KeyringService: entries, versions, sealing; every method a declared gate operation), approle
(KeyringAppRoles: expiring role_id/secret_id logins), repository (the bridge's SQL), vault_app (the wire protocol,
drop-don't-5xx on reads), admin_routes (native API), server (the bridge's gunicorn arbiter), cli (`kms-broker
keyring`), formats (key files in and out). Resource names: broker/policy/keyring_names.py. Guide:
docs/keyring-bridge.md.
"""
