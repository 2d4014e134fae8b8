"""Screenshots of the console's main pages for docs/console.md, from a real broker with a little data in it.

    python -m tests.console.screenshots docs/img

Starts its own broker (temporary folder), seeds keys, a policy, a multi-key, keyring entries and some traffic, then
captures each page at 1280 px (and the key list at phone width) with Debian's Chromium.
"""

from __future__ import annotations

import base64
import sys
import tempfile
from pathlib import Path

import requests

from tests.console.browser import chromium, open_tab
from tests.console.conftest import Console, api, make_key
from tests.support.broker import start_broker

PAGES = [("keys", "/ui/keys"), ("key", "/ui/keys/{key}"), ("create", "/ui/keys/new"),
         ("policy-error", None), ("simulator", None), ("audit", "/ui/audit"), ("activity", "/ui/activity"),
         ("keyring", "/ui/keyring"), ("cross-cloud", "/ui/cross-cloud")]


def seed(broker) -> str:
    billing = make_key(broker, "billing data", Tags={"team": "billing", "env": "prod"})
    api(broker, "POST", "/aliases", json={"AliasName": "alias/billing", "TargetKeyId": billing})
    api(broker, "POST", f"/keys/{billing}/rotate")
    api(broker, "PUT", f"/keys/{billing}/rotation", json={"RotationPeriodInDays": 365})
    make_key(broker, "signing", KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY", Tags={"team": "platform"})
    make_key(broker, "webhook MACs", KeySpec="HMAC_256", Tags={"team": "platform"})
    other = make_key(broker, "orders database", Tags={"team": "payments"})
    api(broker, "POST", f"/keys/{other}/disable")
    api(broker, "POST", "/multikeys", json={"Name": "orders", "Members": [billing, other]})
    for i in range(40):
        api(broker, "POST", f"/keys/{billing}/encrypt", json={"Plaintext": base64.b64encode(b"x" * i).decode()})
    api(broker, "POST", "/keys/alias/nope/encrypt", json={"Plaintext": "eA=="})
    api(broker, "POST", "/keyring/entries", json={"Mount": "kv", "Id": "mariadb-1", "RotationPeriodSeconds": 86400 * 90})
    api(broker, "POST", "/keyring/entries", json={"Mount": "kv", "Id": "mariadb-2"})
    return billing


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="kmsb-shots-"))
    broker = start_broker(base / "data", base / "logs", workers=1)
    try:
        key = seed(broker)
        Console(broker, requests.Session()).login(broker.root_token)
        for browser in chromium():
            tab = open_tab(browser, width=1280, height=860)
            page = tab.page
            page.goto(f"{broker.addr}/ui/login")
            page.get_by_label("Broker token").fill(broker.root_token)
            page.get_by_role("button", name="Log in").click()
            for name, path in PAGES:
                if name == "policy-error":
                    page.goto(f"{broker.addr}/ui/policies-new")
                    page.get_by_label("Name").fill("ops-readers")
                    page.locator("#document").fill('{\n  "Version": "2012-10-17",\n  "Statement": [\n    {\n'
                                                   '      "Effect": "Allow",\n      "Action": ["kms:Decrypt",'
                                                   ' "kms:Frobnicate"],\n      "Resource": "*"\n    }\n  ]\n}')
                    page.locator("#save-policy").click()
                elif name == "simulator":
                    page.goto(f"{broker.addr}/ui/simulator")
                    page.get_by_label("Principal name").fill("alice")
                    page.get_by_label("Its policies").fill("key-user")
                    page.get_by_label("Action").fill("kms:Decrypt")
                    page.get_by_label("Key (id or alias)").fill("alias/billing")
                    page.get_by_role("button", name="Simulate").click()
                else:
                    response = page.goto(f"{broker.addr}{path.format(key=key)}")
                    if response is None or response.status != 200:
                        continue  # a page this build does not serve
                page.screenshot(path=str(out / f"console-{name}.png"), full_page=False)
            page.context.close()
            phone = open_tab(browser, width=390, height=780)
            phone.page.goto(f"{broker.addr}/ui/login")
            phone.page.get_by_label("Broker token").fill(broker.root_token)
            phone.page.get_by_role("button", name="Log in").click()
            phone.page.goto(f"{broker.addr}/ui/keys/{key}")
            phone.page.screenshot(path=str(out / "console-phone.png"))
    finally:
        broker.server.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img"))
