"""The AWS door computes the signature of the plain request shape itself (botocore's rebuild costs ~60 us a request):
for every request it must give botocore's answer, or none at all (and then botocore answers). Drawn at random: header
names (botocore's never-signed ones included), values with every kind of whitespace and Latin-1 text, hosts that
are plain or that would change the URL botocore parses, paths, query strings, bodies, an X-Amz-Content-SHA256 that
may or may not match."""

from __future__ import annotations

import hashlib

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import example, given, settings
from hypothesis import strategies as st

from broker.auth.sigv4 import SigV4Verifier

VERIFIER = SigV4Verifier.__new__(SigV4Verifier)
VERIFIER.service = "kms"

latin1 = st.text(st.characters(min_codepoint=0x09, max_codepoint=0xFF, blacklist_characters="\r\n"), max_size=40)
# whitespace runs of every kind Python's str.split() knows in Latin-1, between a few letters
spaced = st.text(st.sampled_from([" ", "\t", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "a", "B", ",", "é"]),
                 max_size=20)
names = st.sampled_from(["content-type", "x-amz-target", "x-amz-date", "x-amz-user-agent", "user-agent", "expect",
                         "x-amzn-trace-id", "content-length", "x-custom", "x-amz-content-sha256", "accept"])
hosts = st.one_of(st.sampled_from(["127.0.0.1:8200", "127.0.0.1:8200", "127.0.0.1:8200", "kms.us-east-1.amazonaws.com", "localhost", "[::1]:8200",
                                   "host:99999", "evil/x?y", "a@b", "h#f", "", "UPPER.example:443"]), latin1)


def botocore_signature(method, path, query, headers, body, amz_date, region, secret):
    url = f"http://{headers['host']}{path}" + (f"?{query}" if query else "")
    rebuilt = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    rebuilt.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials("AKIAEXAMPLE", secret), "kms", region)
    return auth.signature(auth.string_to_sign(rebuilt, auth.canonical_request(rebuilt)), rebuilt)


SDK_HEADERS = {"host": "127.0.0.1:8200", "x-amz-date": "20261202T070000Z",
               "content-type": "application/x-amz-json-1.1", "x-amz-target": "TrentService.Encrypt"}


@settings(max_examples=600, deadline=None)
@given(method=st.sampled_from(["POST", "post", "GET"]), path=st.sampled_from(["/", "/", "/", "//", "/a/../", "/x"]),
       query=st.sampled_from(["", "", "", "a=1", "b=2&a=1"]), host=hosts,
       extra=st.dictionaries(names, st.one_of(spaced, latin1), max_size=5), body=st.binary(max_size=200),
       region=st.sampled_from(["us-east-1", "eu-west-3"]), secret=st.text(min_size=1, max_size=40),
       sha=st.sampled_from([None, "", "match", "0" * 64]))
@example(method="POST", path="/", query="", host="127.0.0.1:8200", extra={}, body=b"{}", region="us-east-1",
         secret="s" * 40, sha=None)
def test_the_plain_shape_gets_botocores_signature_or_none(method, path, query, host, extra, body, region, secret,
                                                          sha):
    headers = {**extra, "host": host, "x-amz-date": "20261202T070000Z"}
    if sha is not None:
        headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest() if sha == "match" else sha
    mine = VERIFIER.plain_signature(method=method, path=path, query=query, headers=headers, body=body,
                                    amz_date="20261202T070000Z", region=region, secret=secret)
    if mine is not None:
        assert mine == botocore_signature(method, path, query, headers, body, "20261202T070000Z", region, secret)


def test_what_sdks_send_is_the_plain_shape():
    for extra in ({}, {"x-amz-content-sha256": hashlib.sha256(b'{"KeyId":"k"}').hexdigest()},
                  {"x-amz-user-agent": "aws-sdk-js/3  (node)  "}):
        headers = {**SDK_HEADERS, **extra}
        mine = VERIFIER.plain_signature(method="POST", path="/", query="", headers=headers, body=b'{"KeyId":"k"}',
                                        amz_date="20261202T070000Z", region="us-east-1", secret="s" * 40)
        assert mine is not None
        assert mine == botocore_signature("POST", "/", "", headers, b'{"KeyId":"k"}', "20261202T070000Z",
                                          "us-east-1", "s" * 40)


def test_anything_else_is_left_to_botocore():
    for changed in ({"path": "/x"}, {"query": "a=1"}, {"headers": {**SDK_HEADERS, "host": "evil/x?y"}},
                    {"headers": {**SDK_HEADERS, "user-agent": "signed anyway"}}):
        args = {"method": "POST", "path": "/", "query": "", "headers": SDK_HEADERS, "body": b"{}",
                "amz_date": "20261202T070000Z", "region": "us-east-1", "secret": "s" * 40, **changed}
        assert VERIFIER.plain_signature(**args) is None
