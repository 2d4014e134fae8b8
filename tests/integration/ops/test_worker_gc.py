"""Both listeners' gunicorn workers take what they built at start out of the collector's view (`gc.freeze` in
post_worker_init): a full collection in an API worker walked ~157k startup objects, 84-113 ms with the interpreter
lock held, during which every request of that worker waited (`docs/performance.md`)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import requests

from broker.wsgi import api_options, freeze_startup_objects
from keyring_bridge.server import bridge_options
from tests.support.procs import free_port, port_open, start_server

pytestmark = pytest.mark.integration

SERVER = textwrap.dedent("""
    import gc, json, sys
    from broker.wsgi import GunicornApp, api_options
    from keyring_bridge.server import bridge_options

    def app(environ, start_response):  # what the worker's collector holds, asked in the worker itself
        body = json.dumps({"frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    listener, bind = sys.argv[1], sys.argv[2]
    options = api_options(bind=bind, workers=1, threads=2) if listener == "api" else \\
        bridge_options(bind, workers=1, threads=2)
    options.update(control_socket_disable=True, proc_name="kmsb-test-gc")
    GunicornApp(lambda: app, options).run()
""")


def test_both_listeners_freeze_in_the_worker_after_building_the_app() -> None:
    assert api_options(bind="127.0.0.1:0", workers=1, threads=1)["post_worker_init"] is freeze_startup_objects
    assert bridge_options("127.0.0.1:0", workers=1, threads=1)["post_worker_init"] is freeze_startup_objects


@pytest.mark.parametrize("listener", ["api", "keyring"])
def test_a_served_worker_has_frozen_its_startup_objects(listener: str, tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    port, checkout = free_port(), str(Path(__file__).resolve().parents[3])
    server = start_server(f"gc-{listener}", [sys.executable, str(script), listener, f"127.0.0.1:{port}"],
                          log_dir=tmp_path, ready=lambda: port_open(port), env={"PYTHONPATH": checkout})
    try:
        seen = requests.get(f"http://127.0.0.1:{port}/", timeout=10).json()
    finally:
        server.stop()
    assert seen["frozen"] > 10_000  # gunicorn, the modules: all frozen before the first request
    assert seen["tracked"] < seen["frozen"] // 10  # what a full collection still walks
