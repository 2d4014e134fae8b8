"""Backup and restore: the store, the root-of-trust keys wrapped under a backup key split among M-of-N custodians,
and the HSM-signed audit head, in one archive (docs/operations.md)."""
