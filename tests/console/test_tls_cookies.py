"""Over TLS the console's cookies are Secure and pages carry HSTS: the real app asked over https (the WSGI scheme a
TLS-terminating server or proxy sets), in a fresh process on its own data folder (SoftHSM reads one token
configuration per process, and no other writer shares this audit log)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import json, re, sys
    from pathlib import Path
    from broker.app import create_app
    from broker.settings import load_settings
    from tests.support.broker import init_data_dir

    data = Path(sys.argv[1])
    token = init_data_dir(data)
    app = create_app(load_settings(data))
    client = app.test_client()
    https = {"base_url": "https://console.example"}
    page = client.get("/ui/login", **https)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    login = client.post("/ui/login/token", data={"csrf": csrf, "token": token}, **https)
    plain = app.test_client().get("/ui/login")
    print(json.dumps({"page": page.headers.getlist("Set-Cookie"), "hsts": page.headers.get("Strict-Transport-Security"),
                      "login_status": login.status_code, "login": login.headers.getlist("Set-Cookie"),
                      "plain": plain.headers.getlist("Set-Cookie"),
                      "plain_hsts": plain.headers.get("Strict-Transport-Security")}))
""")


def test_cookies_are_secure_and_hsts_is_sent_over_tls(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "data")], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["hsts"] and all("Secure" in c for c in seen["page"])
    assert seen["login_status"] == 302
    session = next(c for c in seen["login"] if c.startswith("kmsb_console="))
    assert all(flag in session for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/ui"))
    assert not any("Secure" in c for c in seen["plain"]) and seen["plain_hsts"] is None
