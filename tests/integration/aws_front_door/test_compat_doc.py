"""docs/aws-compat.md lists every operation of the AWS KMS API (botocore's service model is the reference), and says
"Yes" exactly for the operations the front door serves; the others answer UnsupportedOperationException."""

from __future__ import annotations

import re
from pathlib import Path

import botocore.session

from broker.api.aws import NOT_SUPPORTED, OPERATIONS

DOC = Path(__file__).resolve().parents[3] / "docs" / "aws-compat.md"


def test_the_table_covers_the_whole_api_and_matches_the_code():
    model = set(botocore.session.get_session().get_service_model("kms").operation_names)
    text = DOC.read_text()
    rows = dict(re.findall(r"^\| ([A-Z][A-Za-z]+) \| (Yes|No) \|", text, re.M))
    assert set(rows) == model
    assert {op for op, yes in rows.items() if yes == "Yes"} == set(OPERATIONS)
    assert {op for op, yes in rows.items() if yes == "No"} == set(NOT_SUPPORTED)
    assert all(reason for reason in NOT_SUPPORTED.values())
