"""The SigV4 verifier's shortcuts give the answers of what they replace.

* `parse_amz_date` reads the SDKs' X-Amz-Date by slicing: for every string it must return what
  `datetime.strptime(text, AMZ_DATE)` returns, or refuse it as strptime does (hostile dates: one-digit fields,
  lower-case letters, non-ASCII digits, month 13, 30 February, hour 24, second 60, spaces, a trailing newline);
* `environ_headers` reads a WSGI environ's headers directly: for every environ it must give what lower-casing
  werkzeug's `EnvironHeaders` gives (names in any case, underscores, duplicates after lower-casing, non-ASCII
  names, the CGI Content-Type/Length, empty values);
* the verifier with both, and with the signing key kept, refuses what it refused with strptime and EnvironHeaders,
  with the same AWS error code and message: stale and future dates, unparseable ones, a signature replayed over
  another body, target or region, or under another secret for the same access key id.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import example, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import EnvironHeaders

from broker.auth import Principal, sigv4
from broker.auth.sigv4 import AMZ_DATE, SigV4Verifier, environ_headers, parse_amz_date

HOSTILE_DATES = [
    "20261202T070000Z", "20261202t070000z", "20261202T070000z", "2026122T7000Z", "202612 2T070000Z",
    "20261302T070000Z", "20260230T070000Z", "20240229T000000Z", "20230229T000000Z", "20261200T070000Z",
    "20261232T070000Z", "20260002T070000Z", "00001202T070000Z", "20261202T240000Z", "20261202T236000Z",
    "20261202T235960Z", "20261202T235961Z", "20261202T235959Z", "20261202T070000Z\n", " 20261202T070000Z",
    "20261202T070000", "20261202T0700000Z", "2026-12-02T07:00:00Z", "٢٠٢٦١٢٠٢T070000Z", "20261202T07000０Z",
    "20261202T070000Z,20261202T070000Z", "", "Z", "99991231T235959Z", "+2026120T070000Z", "2026120-T70000Z",
]


def strptime_or_error(text: str) -> datetime | str:
    try:
        return datetime.strptime(text, AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        return "refused"


def parsed_or_error(text: str) -> datetime | str:
    try:
        return parse_amz_date(text)
    except ValueError:
        return "refused"


@pytest.mark.parametrize("text", HOSTILE_DATES)
def test_hostile_dates_get_strptimes_answer(text):
    assert parsed_or_error(text) == strptime_or_error(text)


def test_every_field_boundary_of_the_sdk_form_gets_strptimes_answer():
    for month in range(0, 20):
        for day in (0, 1, 9, 10, 28, 29, 30, 31, 32, 39, 99):
            for clock in ("000000", "235959", "240000", "006000", "000060", "000061", "999999", "095909"):
                text = f"2024{month:02d}{day:02d}T{clock}Z"
                assert parsed_or_error(text) == strptime_or_error(text), text


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.from_regex(r"[0-9]{8}T[0-9]{6}Z", fullmatch=True),
                 st.text(st.sampled_from("0123456789TtZz -+:\n٠١２"), max_size=18)))
@example("20261202T070000Z")
def test_any_date_gets_strptimes_answer(text):
    assert parsed_or_error(text) == strptime_or_error(text)


header_keys = st.one_of(
    st.sampled_from(["HTTP_HOST", "HTTP_X_AMZ_DATE", "HTTP_x_amz_date", "HTTP_X-AMZ-DATE", "HTTP_AUTHORIZATION",
                     "HTTP_X_AMZ_TARGET", "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "CONTENT_TYPE",
                     "CONTENT_LENGTH", "REQUEST_METHOD", "wsgi.input", "HTTP_", "HTTP_ß", "HTTP_İ", "HTTP_ǅX",
                     "HTTP_X_ﬁ", "http_x_amz_date", "SERVER_NAME"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x17F), max_size=12).map(lambda s: f"HTTP_{s}"))
header_values = st.one_of(st.sampled_from(["", "v", "a, b", "20261202T070000Z"]),
                          st.text(st.characters(min_codepoint=0x09, max_codepoint=0xFF), max_size=10))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(header_keys, header_values), max_size=12))
@example([("HTTP_X_AMZ_DATE", "a"), ("HTTP_x_amz_date", "b"), ("CONTENT_TYPE", ""), ("HTTP_CONTENT_TYPE", "c")])
def test_environ_headers_are_werkzeugs_lower_cased(pairs):
    environ = dict(pairs)
    assert list(environ_headers(environ).items()) == list({k.lower(): v for k, v in
                                                          EnvironHeaders(environ).items()}.items())


# ---------------------------------------------------------------------------------------------- the verifier

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
PRINCIPAL = Principal("shortcuts", "sigv4", ())


class OneCredential:
    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret

    def lookup(self, access_key_id: str) -> tuple[Principal, str]:
        if access_key_id != "AKIDEXAMPLE":
            raise sigv4.UnrecognizedClient("The security token included in the request is invalid.")
        return PRINCIPAL, self.secret


def signed(amz_date: str, body: bytes = b'{"KeyId":"k"}', *, region: str = "us-east-1", secret: str = SECRET,
           target: str = "TrentService.Encrypt", **extra: str) -> dict[str, str]:
    """Headers of a POST / signed by botocore with exactly this X-Amz-Date (as an SDK would send, header names in
    their usual case), whatever the date says."""
    request = AWSRequest(method="POST", url="http://127.0.0.1:8200/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target, "X-Amz-Date": amz_date})
    request.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials("AKIDEXAMPLE", secret), "kms", region)
    signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    names = auth.signed_headers(auth.headers_to_sign(request))
    return {"Host": "127.0.0.1:8200", "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target,
            "X-Amz-Date": amz_date, "Authorization": f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{amz_date[:8]}/"
            f"{region}/kms/aws4_request, SignedHeaders={names}, Signature={signature}", **extra}


def outcome(headers: dict[str, str], body: bytes, now: datetime, credentials: OneCredential) -> tuple[str, str]:
    try:
        verified = SigV4Verifier(credentials, clock=lambda: now).verify("POST", "/", "", headers, body)
    except sigv4.errors.BrokerError as exc:
        return exc.code, exc.message
    return "verified", verified.region


def before(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier as it was: strptime for the date, every signing key derived afresh."""
    monkeypatch.setattr(sigv4, "parse_amz_date", lambda text: datetime.strptime(text, AMZ_DATE).replace(tzinfo=UTC))
    monkeypatch.setattr(sigv4, "_signing_key", sigv4._signing_key.__wrapped__)


NOW = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)


def cases() -> list[tuple[str, dict[str, str], bytes, datetime, str]]:
    """(name, headers, body, clock, secret the credential has now)."""
    body = b'{"KeyId":"k"}'
    out = [(f"date {text!r}", signed(text), body, NOW, SECRET) for text in HOSTILE_DATES]
    out += [
        ("expired", signed("20261202T065459Z"), body, NOW, SECRET),
        ("at the edge", signed("20261202T065500Z"), body, NOW, SECRET),
        ("not yet current", signed("20261202T070501Z"), body, NOW, SECRET),
        ("lower-case t and z, in the window", signed("20261202t070000z"), body, NOW, SECRET),
        ("replayed over another body", signed("20261202T070000Z"), b'{"KeyId":"other"}', NOW, SECRET),
        ("replayed with another target", {**signed("20261202T070000Z"), "X-Amz-Target": "TrentService.Decrypt"},
         body, NOW, SECRET),
        ("replayed under another region's scope", {**signed("20261202T070000Z"), "Authorization": signed(
            "20261202T070000Z")["Authorization"].replace("/us-east-1/", "/eu-west-1/")}, body, NOW, SECRET),
        ("replayed after the secret changed", signed("20261202T070000Z"), body, NOW, "another-secret"),
        ("replayed next day", signed("20261202T070000Z"), body, NOW + timedelta(days=1), SECRET),
        ("date header in another case", {**{k: v for k, v in signed("20261202T070000Z").items()
                                            if k != "X-Amz-Date"}, "x-AMZ-date": "20261202T070000Z"},
         body, NOW, SECRET),
    ]
    return out


@pytest.mark.parametrize("case", cases(), ids=lambda c: c[0])
def test_the_verifier_answers_as_before(case, monkeypatch):
    _name, headers, body, now, secret = case
    mine = outcome(headers, body, now, OneCredential(secret))
    # the same request once more (the signing key is now kept), then the verifier as it was
    again = outcome(headers, body, now, OneCredential(secret))
    with monkeypatch.context() as patch:
        before(patch)
        theirs = outcome(headers, body, now, OneCredential(secret))
    assert mine == again == theirs


def test_refusals_keep_their_aws_codes():
    """The verdicts the differential test compares are the ones AWS gives, not all 'verified'."""
    got = {name: outcome(headers, body, now, OneCredential(secret))[0]
           for name, headers, body, now, secret in cases()}
    assert got["date '20261202T070000Z'"] == got["lower-case t and z, in the window"] == "verified"
    assert got["at the edge"] == got["date header in another case"] == "verified"
    for name in ("expired", "not yet current", "replayed over another body", "replayed with another target",
                 "replayed under another region's scope", "replayed after the secret changed", "replayed next day"):
        assert got[name] == "InvalidSignatureException", name
    for text in ("20261302T070000Z", "20260230T070000Z", "20261202T240000Z", "20261202T235960Z", "",
                 "20261202T070000Z,20261202T070000Z"):
        assert got[f"date {text!r}"] == "IncompleteSignatureException", text
