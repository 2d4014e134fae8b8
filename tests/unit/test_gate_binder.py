"""The gate binds an operation's arguments without `inspect.Signature.bind` on every call: it must bind exactly as
`inspect` does (same names, same defaults, the same TypeError for a call that does not fit), and the body must get
the arguments as the needs left them (a checked context replaces the one given)."""

from __future__ import annotations

import inspect

import pytest

from broker.gate import _Binder

HOST, CALL = object(), object()


def plain(self, call, key_ref, plaintext=b"", context=None, *, grant_tokens=(), dry_run=False):
    return key_ref, plaintext, context, grant_tokens, dry_run


def star(self, call, *names, **extra):
    return names, extra


def positional_only(self, call, key_ref, /, limit=10):
    return key_ref, limit


CALLS = [
    ((), {}),
    (("k",), {}),
    (("k", b"x"), {}),
    (("k", b"x", {"a": "b"}), {}),
    (("k",), {"context": {"a": "b"}}),
    ((), {"key_ref": "k"}),
    (("k",), {"dry_run": True}),
    (("k",), {"grant_tokens": ["g"], "plaintext": b"y"}),
    (("k", b"x", None, "one too many"), {}),
    (("k",), {"key_ref": "twice"}),
    (("k",), {"unknown": 1}),
    (("k",), {"self": "hijack"}),
    (("k",), {"call": "hijack"}),
    (("a", "b"), {"x": 1}),
    (("k", 5), {}),
]


def inspect_binding(fn, args, kwargs):
    try:
        bound = inspect.signature(fn).bind(HOST, CALL, *args, **kwargs)
    except TypeError as exc:
        return TypeError, str(exc)
    bound.apply_defaults()
    return dict(bound.arguments), fn(*bound.args, **bound.kwargs)


def binder_binding(fn, args, kwargs):
    binder = _Binder(fn)
    try:
        arguments = binder.bind(HOST, CALL, args, kwargs)
    except TypeError as exc:
        return TypeError, str(exc)
    return dict(arguments), binder.invoke(fn, arguments)


@pytest.mark.parametrize("fn", [plain, star, positional_only], ids=lambda f: f.__name__)
@pytest.mark.parametrize(("args", "kwargs"), CALLS, ids=[repr(c)[:40] for c in CALLS])
def test_binds_as_inspect_does(fn, args, kwargs):
    assert binder_binding(fn, args, kwargs) == inspect_binding(fn, args, kwargs)


def test_the_plain_shape_is_bound_without_inspect(monkeypatch):
    binder = _Binder(plain)

    def refuse(*_a, **_k):
        raise AssertionError("inspect.Signature.bind called for a plain call")

    monkeypatch.setattr(inspect.Signature, "bind", refuse)
    assert binder.bind(HOST, CALL, ("k",), {"dry_run": True})["dry_run"] is True
    with pytest.raises(AssertionError):  # a call that does not fit still goes to inspect
        binder.bind(HOST, CALL, ("k",), {"unknown": 1})


def test_the_body_gets_the_arguments_the_needs_left():
    binder = _Binder(plain)
    arguments = binder.bind(HOST, CALL, ("k",), {"context": {"a": "b"}})
    arguments["context"] = {"checked": "yes"}
    assert binder.invoke(plain, arguments) == ("k", b"", {"checked": "yes"}, (), False)
