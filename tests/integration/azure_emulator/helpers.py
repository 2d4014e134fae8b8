"""Assertions shared by the conformance tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError


def expect_error(status: int, code: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> HttpResponseError:
    """`call` must fail with Key Vault's error `code` and HTTP `status`, as the SDK parses them."""
    with pytest.raises(HttpResponseError) as info:
        call(*args, **kwargs)
    err = info.value
    assert err.status_code == status, f"{err.status_code} {err.message}"
    assert err.error is not None and err.error.code == code, err.message
    return err
