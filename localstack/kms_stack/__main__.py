"""`python -m kms_stack` — the same group the `kms-broker stack` command mounts."""

from .cli import stack

stack(prog_name="python -m kms_stack")
