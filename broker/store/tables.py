"""Tables of the broker store. Secret columns hold only material wrapped under the root KEK."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class KeyRow(Base):
    __tablename__ = "keys"
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), index=True)
    spec: Mapped[str] = mapped_column(String(32))
    usage: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(32), index=True)
    origin: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    primary_version: Mapped[int] = mapped_column(Integer, default=1)
    deletion_date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    rotation_period_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    next_rotation_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)


class KeyVersionRow(Base):
    __tablename__ = "key_versions"
    key_id: Mapped[str] = mapped_column(String(64), ForeignKey("keys.key_id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider_ref: Mapped[str] = mapped_column(Text)  # JSON of ProviderKeyRef.to_dict()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16), default="Enabled")
    rotation_type: Mapped[str | None] = mapped_column(String(16), nullable=True, default=None)


class AliasRow(Base):
    __tablename__ = "aliases"
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), ForeignKey("keys.key_id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TagRow(Base):
    __tablename__ = "key_tags"
    key_id: Mapped[str] = mapped_column(String(64), ForeignKey("keys.key_id"), primary_key=True)
    tag_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    tag_value: Mapped[str] = mapped_column(String(256))


class ImportTokenRow(Base):
    __tablename__ = "import_tokens"
    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), ForeignKey("keys.key_id"), index=True)
    handle: Mapped[str] = mapped_column(Text)  # JSON; secret parts wrapped under the root KEK
    wrapping_algorithm: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuthTokenRow(Base):
    __tablename__ = "auth_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the token
    accessor: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(256))
    policies: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of policy names
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    parent_accessor: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


# ------------------------------------------------------------------------------------------------ keyring bridge
# Owned by keyring_bridge/ (migration 0003_keyring, branch "keyring"). Secret columns hold only sealed material.


class KeyringMountRow(Base):
    __tablename__ = "keyring_mounts"
    mount: Mapped[str] = mapped_column(String(255), primary_key=True)
    kv_version: Mapped[int] = mapped_column(Integer, default=2)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class KeyringEntryRow(Base):
    __tablename__ = "keyring_entries"
    mount: Mapped[str] = mapped_column(String(255), primary_key=True)
    entry_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    latest_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    custom_metadata: Mapped[str] = mapped_column(Text, default="{}")  # JSON, never secret
    rotation_period_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    next_rotation_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)


class KeyringVersionRow(Base):
    __tablename__ = "keyring_versions"
    mount: Mapped[str] = mapped_column(String(255), primary_key=True)
    entry_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    sealed: Mapped[str] = mapped_column(Text)  # base64 of the root-KEK seal of the secret's JSON
    origin: Mapped[str] = mapped_column(String(16))  # hsm | written | imported
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # dropin branch migration 0010: Vault KV v2 soft delete (reversible) and destroy (only through an approved
    # request: the sealed material is emptied, the row stays as the version's metadata)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, default=None)
    destroyed: Mapped[bool] = mapped_column(Boolean, default=False)


class KeyringAppRoleRow(Base):
    __tablename__ = "keyring_approles"
    role_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    role_id: Mapped[str] = mapped_column(String(64), unique=True)
    secret_id_hash: Mapped[str] = mapped_column(String(64))  # SHA-256 of the secret_id
    policies: Mapped[str] = mapped_column(Text, default="[]")
    token_ttl_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # keyring branch migration 0003_1: a secret id stops working at this instant (NULL: already expired)
    secret_id_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PolicyRow(Base):
    """A named identity policy (JSON document); principals carry policy names."""

    __tablename__ = "policies"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    document: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class KeyPolicyRow(Base):
    __tablename__ = "key_policies"
    key_id: Mapped[str] = mapped_column(String(64), ForeignKey("keys.key_id"), primary_key=True)
    document: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GrantRow(Base):
    __tablename__ = "grants"
    grant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), ForeignKey("keys.key_id"), index=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    grantee: Mapped[str] = mapped_column(String(256))
    retiring: Mapped[str] = mapped_column(String(256), default="")
    operations: Mapped[str] = mapped_column(Text)  # JSON list
    constraints: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    token_hash: Mapped[str] = mapped_column(String(64), index=True)  # SHA-256 of the grant token
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# ------------------------------------------------------------------------------------------------ identity (0005)


class IdentityTokenRow(Base):
    """What a token carries beyond auth_tokens: how it was issued, renewal bounds, metadata (→ Principal.attributes)."""

    __tablename__ = "identity_tokens"
    accessor: Mapped[str] = mapped_column(String(64), primary_key=True)
    auth_method: Mapped[str] = mapped_column(String(32), default="token")
    renewable: Mapped[bool] = mapped_column(Boolean, default=True)
    ttl_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    meta: Mapped[str] = mapped_column(Text, default="{}")  # JSON object of str -> str


class JwtRoleRow(Base):
    """A JWT/OIDC login role written through the API (roles may also come from settings)."""

    __tablename__ = "auth_jwt_roles"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    config: Mapped[str] = mapped_column(Text)  # JSON of broker.auth.jwt_auth.JwtRole
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AppRoleRow(Base):
    __tablename__ = "auth_approle_roles"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    role_id: Mapped[str] = mapped_column(String(64), unique=True)
    config: Mapped[str] = mapped_column(Text)  # JSON of broker.auth.approle.AppRole
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AppRoleSecretRow(Base):
    """A secret id: stored as its SHA-256 only; uses_left None means unlimited."""

    __tablename__ = "auth_approle_secret_ids"
    secret_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    accessor: Mapped[str] = mapped_column(String(64), unique=True)
    role_name: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    uses_left: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cidrs: Mapped[str] = mapped_column(Text, default="[]")
    meta: Mapped[str] = mapped_column(Text, default="{}")


# ---------------------------------------------------------------------------------------------------- AWS front door


class AwsCredentialRow(Base):
    """SigV4 credentials of the AWS-compatible front door (migration 0002_aws_credentials)."""

    __tablename__ = "aws_credentials"
    access_key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sealed_secret: Mapped[str] = mapped_column(Text, default="")  # base64 of the secret sealed under the root KEK
    display_name: Mapped[str] = mapped_column(String(256))
    policies: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of policy names
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(256), default="")
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Credentials die with their parent (migration 0002b): the creating token's accessor, an own expiry, and the
    # creator's attributes (the principal they run as carries exactly those).
    parent_accessor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attributes: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON object of str -> str


# ---------------------------------------------------------------------------------------------------- audit


class AuditEventRow(Base):
    """The store copy of the audit chains (migration 0004_audit): one row per record, the JSON line as written.

    Each host's audit file is its own chain (`chain` = host:path), so brokers on many hosts can share one store.
    """

    __tablename__ = "audit_events"
    __table_args__ = (UniqueConstraint("chain", "seq", name="uq_audit_events_chain_seq"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    chain: Mapped[str] = mapped_column(String(255), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    record_type: Mapped[str] = mapped_column(String(32), default="event")
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    principal: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    auth_method: Mapped[str | None] = mapped_column(String(32), nullable=True)
    source_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    record: Mapped[str] = mapped_column(Text)


# ---------------------------------------------------------------------------------------------------- replication


class MultiKeyRow(Base):
    """A multi-key (envelope keyring): member broker keys on several providers (migration 0007_replication)."""

    __tablename__ = "multikeys"
    multikey_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    members: Mapped[str] = mapped_column(Text)  # JSON list of broker key ids, in decrypt priority order
    quorum: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: every member must wrap
    generation: Mapped[int] = mapped_column(Integer, default=1)  # bumped on each membership change
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReplicaRow(Base):
    """One cloud copy of a replicated key: HSM-born material imported through the cloud's own import protocol."""

    __tablename__ = "key_replicas"
    primary_key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    target: Mapped[str] = mapped_column(String(64), primary_key=True)  # provider instance name
    replica_key_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SyncJournalRow(Base):
    """Sync apply journal: an intent is written before every external create and closed after it."""

    __tablename__ = "sync_journal"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    manifest: Mapped[str] = mapped_column(String(128), index=True)
    entry: Mapped[str] = mapped_column(String(256))
    target: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64), index=True)  # the broker key id chosen before the create
    action: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)  # intent | created | done | aborted
    provider_ref: Mapped[str] = mapped_column(Text, default="")  # JSON ProviderKeyRef once the provider answered
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# ---------------------------------------------------------------------------------------------------- trust (0008)
# Quorum approvals, backup custodian sets and cluster nodes (broker/approvals.py, broker/backup/, broker/nodes.py).


class ApprovalRuleRow(Base):
    """Who may approve an operation kind, how many must, and how long the cooling-off and the request's life are."""

    __tablename__ = "approval_rules"
    operation: Mapped[str] = mapped_column(String(64), primary_key=True)
    approvers: Mapped[str] = mapped_column(Text)  # JSON list of principal names
    required: Mapped[int] = mapped_column(Integer)
    cooling_off_seconds: Mapped[int] = mapped_column(Integer)
    ttl_seconds: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApprovalRequestRow(Base):
    """One request for a quorum-approved operation; `mac` (HSM audit HMAC) binds every field an approval covers."""

    __tablename__ = "approval_requests"
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    operation: Mapped[str] = mapped_column(String(64), index=True)
    params: Mapped[str] = mapped_column(Text)  # canonical JSON, never secret
    digest: Mapped[str] = mapped_column(String(64))  # SHA-256 of (operation, params): what approvers approve
    requester: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending | vetoed | executed
    required: Mapped[int] = mapped_column(Integer)
    approvers: Mapped[str] = mapped_column(Text)  # JSON list, copied from the rule when requested
    cooling_off_seconds: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    quorum_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    closed_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    mac: Mapped[str] = mapped_column(String(128))


class ApprovalVoteRow(Base):
    __tablename__ = "approval_votes"
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    approver: Mapped[str] = mapped_column(String(256), primary_key=True)
    vote: Mapped[str] = mapped_column(String(16))  # approve | veto
    digest: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    mac: Mapped[str] = mapped_column(String(128))


class BackupCustodianSetRow(Base):
    """The backup key pair of one custodian set: the public key, and the private key sealed under the M-of-N
    secret (never under anything a node holds): a backup can be opened only with M shares."""

    __tablename__ = "backup_custodian_sets"
    set_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)  # hex SPKI
    sealed_private_key: Mapped[str] = mapped_column(Text)  # hex AES-GCM(secret-derived key, PKCS#8)
    threshold: Mapped[int] = mapped_column(Integer)
    shares: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    mac: Mapped[str] = mapped_column(String(128), default="")  # HSM audit-key HMAC of the set (0009)


class ClusterNodeRow(Base):
    """A node of the cluster: its HSM's transport key, and once admitted the root package wrapped for it."""

    __tablename__ = "cluster_nodes"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    transport_key: Mapped[str] = mapped_column(Text)  # hex SPKI (public)
    state: Mapped[str] = mapped_column(String(16))  # pending | admitted | joined | removed
    package: Mapped[str] = mapped_column(Text, default="")  # JSON RootPackage (wrapped for this node only)
    fingerprint: Mapped[str] = mapped_column(String(64), default="")  # root KEK check value once joined
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    mac: Mapped[str] = mapped_column(String(128), default="")  # HSM audit-key HMAC of name + transport key (0009)


class JobLeaseRow(Base):
    """One background job (migration 0010): who runs it now (until `lease_until`) and when it is next due."""

    __tablename__ = "job_leases"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255), default="")
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    next_due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    runs: Mapped[int] = mapped_column(Integer, default=0)
    last_holder: Mapped[str] = mapped_column(String(255), default="")
