"""Build provider instances from settings. Adding a backend = one module + one line in KINDS."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from providers.base import Provider

KINDS: dict[str, str] = {
    "pkcs11": "providers.pkcs11:Pkcs11Provider",
    "aws": "providers.aws:AwsProvider",
    "azure": "providers.azure:AzureProvider",
    "gcp": "providers.gcp:GcpProvider",
    "aliyun": "providers.aliyun:AliyunProvider",
}


class UnknownProviderKind(ValueError):
    pass


def provider_class(kind: str) -> type[Provider]:
    try:
        module_name, class_name = KINDS[kind].split(":")
    except KeyError:
        raise UnknownProviderKind(f"unknown provider kind {kind!r}; known: {', '.join(sorted(KINDS))}") from None
    return getattr(importlib.import_module(module_name), class_name)


def build_provider(name: str, config: Mapping[str, Any]) -> Provider:
    kind = config.get("kind")
    if not kind:
        raise UnknownProviderKind(f"provider {name!r} has no 'kind'")
    return provider_class(kind).from_config(name, config)
