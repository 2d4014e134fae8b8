"""Alibaba Cloud KMS (API 2016-01-20) emulator that verifies real SDK signatures."""

from .models import KmsBackend
from .responses import KmsApp
from .signing import Verifier

__all__ = ["KmsApp", "KmsBackend", "Verifier"]
