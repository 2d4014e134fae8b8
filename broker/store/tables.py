"""Tables of the broker store. Secret columns hold only material wrapped under the root KEK."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text
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
