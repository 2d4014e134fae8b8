"""Every action the code authorizes or audits is one the policy language knows (else no policy could name it):
the actions of every declared operation and every action a body checks itself."""

import re
from pathlib import Path

from broker.gate import declared_actions
from broker.policy.document import ALL_ACTIONS
from tests.security.test_gate_structure import _import_everything

ROOT = Path(__file__).resolve().parents[2]
CALL = re.compile(r'(?:operation|authorize|require|holds)\(\s*(?:ctx,\s*(?:entry,\s*)?)?"((?:kms|broker|keyring):[A-Za-z]+)"')


def test_every_authorized_or_audited_action_is_known():
    _import_everything()
    used = set(declared_actions())
    for folder in ("broker", "keyring_bridge"):
        for path in (ROOT / folder).rglob("*.py"):
            used |= set(CALL.findall(path.read_text()))
    assert len(used) > 40  # the scan really found the call sites
    assert sorted(used - ALL_ACTIONS) == []
