"""Build provider instances from settings. Adding a backend = one module + one line in KINDS."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from providers.base import Provider, RootOfTrust

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
    return provider_class(kind).from_config(name, _plain(config))


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """Settings hold provider secrets as secret types that never print; a provider sees the plain values only
    here, while it builds its SDK client."""
    return {k: v.get_secret_value() if callable(getattr(v, "get_secret_value", None)) else v
            for k, v in config.items()}


def root_of_trust(provider: Provider) -> RootOfTrust:
    """The root of trust a provider instance offers (a pkcs11 token does); ValueError for one that offers none."""
    make = getattr(provider, "root_of_trust", None)
    if not callable(make):
        raise ValueError(f"provider {provider.name!r} cannot be the root of trust")
    return make()
