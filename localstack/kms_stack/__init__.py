"""The local multi-cloud KMS stack: start/stop the emulators as detached processes and print their settings.

Not named `localstack` on purpose: that name belongs to LocalStack itself, which runs from its own venv.
"""

from .stack import CLOUDS, Stack, StackError

__all__ = ["CLOUDS", "Stack", "StackError"]
