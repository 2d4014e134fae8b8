"""Native route of backups (/v1/backups): make one archive over the API, with a token allowed broker:CreateBackup."""

from __future__ import annotations

from flask import current_app

from broker.api.native import op
from broker.service import KeyService, RequestContext


@op("/backups", "POST", "CreateBackup",
    "One consistent backup archive (store, root keys wrapped for the custodians' backup key, HSM-signed audit "
    "head); Archive is base64", status=201)
def create_backup(svc: KeyService, ctx: RequestContext):
    backup_id, archive = current_app.extensions["kms"].backups.create(ctx)
    return {"BackupId": backup_id, "Archive": archive}
