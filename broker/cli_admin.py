"""Admin command groups mounted by `broker.cli` (`admin_groups`, a list of click groups).

Each owner appends its groups: identity (`token`, `login`) from broker.cli_auth; policies and audit add theirs.
"""

from __future__ import annotations

from broker.cli_audit import audit
from broker.cli_auth import GROUPS as _AUTH_GROUPS

admin_groups = [*_AUTH_GROUPS, audit]
