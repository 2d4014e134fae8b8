"""The gate is a boundary, not a habit: these scans fail when code goes around it.

* every public method of every service is a declared operation (or a `within` door, or marked `internal`);
* nothing but the gate authorizes or opens an audited operation by hand;
* front doors (REST, AWS JSON 1.1, the Vault-KV bridge, the console) reach no store, provider, policy engine or
  audit log: they parse, call a service, render;
* no module reaches into another module's private members;
* every action a declared operation checks is one the policy language knows.

"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import broker
import keyring_bridge
from broker.gate import DECLARED, Service, declared_actions
from broker.policy.document import ALL_ACTIONS

ROOT = Path(__file__).resolve().parents[2]
SOURCE = [p for folder in ("broker", "keyring_bridge", "providers") for p in sorted((ROOT / folder).rglob("*.py"))
          if "migrations" not in p.parts]
FRONT_DOORS = sorted((ROOT / "broker" / "api").glob("*.py")) + [
    ROOT / "keyring_bridge" / "vault_app.py", ROOT / "keyring_bridge" / "admin_routes.py",
    *sorted((ROOT / "broker" / "console").glob("*.py"))]
_FORBIDDEN_IN_FRONT_DOORS = ("broker.store", "providers", "broker.policy", "broker.audit", "sqlalchemy", "pkcs11")
_FORBIDDEN_ATTRS = {"store", "providers", "policy", "audit", "repo", "engine", "gate"}
_STDLIB_PRIVATE = {"_exit", "_replace", "_asdict", "_fields", "_make", "_getframe"}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _import_everything() -> None:
    for package in (broker, keyring_bridge):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if ".migrations" not in info.name:
                importlib.import_module(info.name)


def test_every_public_service_method_is_declared() -> None:
    _import_everything()
    services = [cls for cls in _subclasses(Service)]
    assert {c.__name__ for c in services} >= {"KeyService", "KeyringService", "KeyringAppRoles", "IdentityService"}
    for cls in services:
        for name, member in inspect.getmembers(cls, callable):
            if name.startswith("_") or name in cls.UNDECLARED_OK or inspect.isclass(member):
                continue
            if isinstance(inspect.getattr_static(cls, name), staticmethod | classmethod):
                continue
            marks = [m for m in ("__declaration__", "__within__", "__internal__") if hasattr(member, m)]
            assert marks, f"{cls.__name__}.{name} is public but not declared"


def test_an_undeclared_operation_cannot_be_defined() -> None:
    with pytest.raises(TypeError, match="not a declared operation"):
        type("Sneaky", (Service,), {"export_everything": lambda self, ctx: None})


def test_an_operation_without_authorization_cannot_be_declared() -> None:
    from broker.gate import operation

    with pytest.raises(TypeError, match="declares no authorization"):
        operation("kms:Decrypt")


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_nothing_calls_the_choke_point_by_hand() -> None:
    offenders = []
    for path in SOURCE:
        if path.name == "gate.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("operation", "authorize", "_audited") \
                    and not (isinstance(node.func.value, ast.Name) and node.func.value.id in ("bp", "app")):
                offenders.append(f"{_rel(path)}:{node.lineno} {ast.unparse(node.func)}")
    assert offenders == []


def test_front_doors_reach_no_store_provider_policy_or_audit() -> None:
    offenders = []
    for path in FRONT_DOORS:
        tree = ast.parse(path.read_text())
        called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}  # b.policy() reads a request member
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(_FORBIDDEN_IN_FRONT_DOORS):
                offenders.append(f"{_rel(path)}:{node.lineno} from {node.module}")
            elif isinstance(node, ast.Import) and any(a.name.startswith(_FORBIDDEN_IN_FRONT_DOORS)
                                                      for a in node.names):
                offenders.append(f"{_rel(path)}:{node.lineno} import")
            elif isinstance(node, ast.Attribute) and node.attr in _FORBIDDEN_ATTRS and id(node) not in called:
                offenders.append(f"{_rel(path)}:{node.lineno} {ast.unparse(node)}")
    assert offenders == []


def _own_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines itself (its classes' methods and attributes, its functions)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name.startswith("_"):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                for target in getattr(stmt, "targets", [getattr(stmt, "target", None)]):
                    if isinstance(target, ast.Name) and target.id.startswith("_"):
                        names.add(target.id)
    return names


def test_no_module_uses_another_modules_private_members() -> None:
    offenders = []
    for path in SOURCE:
        tree = ast.parse(path.read_text())
        own = _own_private_names(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in own or node.attr in _STDLIB_PRIVATE:
                continue
            offenders.append(f"{_rel(path)}:{node.lineno} {ast.unparse(node)}")
    assert offenders == []


def test_every_declared_action_is_in_the_policy_language() -> None:
    _import_everything()
    assert len(DECLARED) > 35
    assert sorted(declared_actions() - ALL_ACTIONS) == []
