"""Policies: list, view, edit (a validation error is shown at its JSON path), and the simulator."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import g, redirect, request, url_for

from broker import errors
from broker.console.web import NAV, bp, form_error, notify, page, services, tr

_PATH = re.compile(r"^((?:policy|Statement)(?:\[\d+\]|\.[A-Za-z]+)*):\s")
MAX_DOCUMENT = 64 * 1024

NAV.extend([("console.policies", "nav.policies"), ("console.simulator", "nav.simulator")])


@bp.get("/policies")
def policies():
    names = services().policies.list_policies(g.ctx)["Policies"]
    return page("policies.html", title=tr("policies.title"), names=names)


@bp.get("/policies/<name>")
def policy(name: str):
    doc = services().policies.get_policy(g.ctx, name)
    return page("policy.html", title=name, name=name, document=doc["Document"], builtin=doc["BuiltIn"],
                text=json.dumps(doc["Document"], indent=2), error=None)


@bp.get("/policies-new")
def new_policy():
    template = {"Version": "2012-10-17", "Statement": [
        {"Sid": "", "Effect": "Allow", "Action": ["kms:DescribeKey"], "Resource": "*"}]}
    return page("policy.html", title=tr("policies.new"), name="", document=template, builtin=False,
                text=json.dumps(template, indent=2), error=None, new=True)


@bp.post("/policies")
def save_policy():
    name = request.form.get("name", "").strip()
    text = request.form.get("document", "")
    g.operation = "broker:PutPolicy"

    def again(exc: errors.BrokerError):
        return page("policy.html", exc.status, title=name or tr("policies.new"), name=name, document=None,
                    builtin=False, text=text, error=_located(exc.message, text), new=request.form.get("new") == "1")
    form_error(again)
    if len(text) > MAX_DOCUMENT:
        raise errors.ValidationError(tr("policies.too_large"))
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.ValidationError(tr("policies.bad_json", line=exc.lineno, column=exc.colno)) from None
    services().policies.put_policy(g.ctx, name, document)
    notify("policies.saved", name=name)
    return redirect(url_for("console.policy", name=name))


def _located(message: str, text: str) -> dict[str, Any]:
    """The error and, when the message names a JSON path, that path and the line it starts on in the editor."""
    match = _PATH.match(message)
    path = match.group(1) if match else ""
    line = _line_of(path, text) if path else None
    if line is None:
        m = re.search(r"line (\d+)", message)
        line = int(m.group(1)) if m and "JSON" in message else None
    return {"message": message, "path": path, "line": line}


def _line_of(path: str, text: str) -> int | None:
    """The 1-based line where `path` (e.g. Statement[0].Action) starts in the submitted JSON text, if it parses."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return None
    steps = re.findall(r"\.?([A-Za-z]+)|\[(\d+)\]", path.removeprefix("policy"))
    node: Any = doc
    pretty_path: list[str | int] = []
    for name, index in steps:
        if name:
            if not isinstance(node, dict) or name not in node:
                break
            node, pretty_path = node[name], [*pretty_path, name]
        else:
            if not isinstance(node, list) or int(index) >= len(node):
                break
            node, pretty_path = node[int(index)], [*pretty_path, int(index)]
    return _find_line(text, pretty_path)


def _find_line(text: str, path: list[str | int]) -> int | None:
    """Walk the text with a tiny scanner that tracks the container path of each key/element start."""
    decoder = json.JSONDecoder()
    target = tuple(path)
    pos = 0

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def value(i: int, here: tuple) -> int | None:
        nonlocal pos
        i = skip(i)
        if here == target:
            pos = i
            return -1
        if i < len(text) and text[i] == "{":
            i = skip(i + 1)
            while i < len(text) and text[i] != "}":
                key, i = decoder.raw_decode(text, i)
                i = skip(i)
                i = skip(i + 1)  # ':'
                if here + (key,) == target:
                    pos = i
                    return -1
                r = value(i, here + (key,))
                if r == -1:
                    return -1
                i = skip(r)
                if i < len(text) and text[i] == ",":
                    i = skip(i + 1)
            return i + 1
        if i < len(text) and text[i] == "[":
            i, n = skip(i + 1), 0
            while i < len(text) and text[i] != "]":
                r = value(i, here + (n,))
                if r == -1:
                    return -1
                i, n = skip(r), n + 1
                if i < len(text) and text[i] == ",":
                    i = skip(i + 1)
            return i + 1
        _, end = decoder.raw_decode(text, i)
        return end

    try:
        if value(0, ()) == -1:
            return text.count("\n", 0, pos) + 1
    except (ValueError, IndexError, RecursionError):
        return None
    return None


@bp.post("/policies/<name>/delete")
def delete_policy(name: str):
    g.operation = "broker:DeletePolicy"
    if request.form.get("confirm", "").strip() != name:
        raise errors.ValidationError(tr("policies.confirm_mismatch", name=name))
    services().policies.delete_policy(g.ctx, name)
    notify("policies.deleted", name=name)
    return redirect(url_for("console.policies"))


# ================================================================================================ simulator

SIM_FIELDS = ("principal", "policies", "action", "key", "resource", "context", "source_ip", "time")


@bp.get("/simulator")
def simulator():
    return _simulator_page({f: request.args.get(f, "") for f in SIM_FIELDS})


def _simulator_page(values: dict[str, str], status: int = 200, result: dict | None = None, error: str = "",
                    statement: Any = None):
    return page("simulator.html", status, title=tr("sim.title"), values=values, result=result, error=error,
                statement=json.dumps(statement, indent=2) if statement is not None else None)


@bp.post("/simulator")
def simulate():
    values = {f: request.form.get(f, "")[:4096] for f in SIM_FIELDS}
    g.operation = "broker:SimulatePolicy"
    form_error(lambda exc: _simulator_page(values, exc.status, error=exc.message))
    context: dict[str, str] = {}
    for line in values["context"].splitlines():
        if line.strip():
            k, sep, v = line.partition("=")
            if not sep:
                raise errors.ValidationError(tr("sim.bad_context", line=line[:64]))
            context[k.strip()] = v.strip()
    result = services().policies.simulate(
        g.ctx, principal={"Name": values["principal"].strip(),
                          "Policies": [p.strip() for p in values["policies"].split(",") if p.strip()]},
        action=values["action"].strip(), key_ref=values["key"].strip() or None,
        resource=values["resource"].strip() or None, context=context or None,
        source_ip=values["source_ip"].strip(), time=values["time"].strip() or None)
    return _simulator_page(values, result=result, statement=_deciding_statement(result))


def _deciding_statement(result: dict) -> Any:
    """The statement that decided, when it lives in a named policy the caller may read."""
    source, index = result.get("Source", ""), result.get("StatementIndex")
    if not source.startswith("identity:") or index is None:
        return None
    try:
        doc = services().policies.get_policy(g.ctx, source.removeprefix("identity:"))["Document"]
        return doc["Statement"][index]
    except (errors.BrokerError, KeyError, IndexError, TypeError):
        return None
