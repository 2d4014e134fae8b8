"""A local Azure Key Vault (keys) emulator that the official azure-keyvault-keys SDK accepts.

moto-like layout: `models` holds state and rules (no HTTP), `responses` the wire format, `server` the CLI.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
