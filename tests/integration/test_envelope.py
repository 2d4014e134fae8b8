"""Client-side envelope encryption against a real broker (gunicorn, SoftHSM): the SDK, the data-key cache, multi-key
wrapping with a member down, and `kms-broker encrypt-file` / `decrypt-file`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from broker.client import BrokerClient
from broker.envelope import CacheLimits, Envelope, KmsDataKeys, MessageError
from broker.envelope import message as m
from tests.support.broker import RunningBroker


@pytest.fixture(scope="module")
def client(broker: RunningBroker) -> BrokerClient:
    return BrokerClient(broker.addr, broker.root_token)


@pytest.fixture(scope="module")
def key(client: BrokerClient) -> str:
    return client.create_key(description="envelope tests")["KeyId"]


def test_round_trip_through_the_broker(client: BrokerClient, key: str) -> None:
    env = Envelope(KmsDataKeys(client), frame_length=4096)
    data = os.urandom(10_000)
    message = env.encrypt(data, key, {"app": "reports"})
    assert env.decrypt(message, {"app": "reports"}) == data
    (wrapped,) = m.parse_header(message).wrapped_keys
    assert key.encode() in wrapped  # a broker ciphertext naming the key
    with pytest.raises(MessageError):
        Envelope(KmsDataKeys(client)).decrypt(message.replace(b'"reports"', b'"reportz"', 1))


def test_the_cache_makes_one_kms_call_per_data_key(client: BrokerClient, key: str) -> None:
    env = Envelope(KmsDataKeys(client), cache=CacheLimits(max_age=300, max_messages=50))
    messages = [env.encrypt(b"row %d" % i, key, {"table": "t"}) for i in range(120)]
    assert env.keys.stats["generated"] == 3
    reader = Envelope(KmsDataKeys(client), cache=CacheLimits(max_age=300))
    assert [reader.decrypt(msg) for msg in messages] == [b"row %d" % i for i in range(120)]
    assert reader.keys.stats["unwrapped"] == 3


def test_a_disabled_key_stops_new_data_keys_and_decryption(client: BrokerClient) -> None:
    key = client.create_key()["KeyId"]
    env = Envelope(KmsDataKeys(client))
    message = env.encrypt(b"data", key)
    client.disable_key(key)
    with pytest.raises(MessageError):
        env.decrypt(message)
    from broker.client import BrokerClientError
    with pytest.raises(BrokerClientError):
        env.encrypt(b"more", key)
    client.enable_key(key)
    assert env.decrypt(message) == b"data"


def test_a_multikey_wraps_the_data_key_under_every_member(client: BrokerClient) -> None:
    first, second = client.create_key()["KeyId"], client.create_key()["KeyId"]
    client.call("POST", "/multikeys", {"Name": "envelope-mk", "Members": [first, second]})
    env = Envelope(KmsDataKeys(client))
    data = os.urandom(5000)
    message = env.encrypt(data, "multikey/envelope-mk", {"app": "x"})
    client.disable_key(first)  # the first-priority member is unusable: the second answers
    try:
        assert env.decrypt(message, {"app": "x"}) == data
    finally:
        client.enable_key(first)


def _cli(broker: RunningBroker, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KMSB_ADDR": broker.addr, "KMSB_TOKEN": broker.root_token}
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], env=env, capture_output=True, timeout=120)


def test_encrypt_file_and_decrypt_file(broker: RunningBroker, key: str, tmp_path) -> None:
    plain, sealed, back = tmp_path / "in.bin", tmp_path / "in.kmbe", tmp_path / "out.bin"
    plain.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    done = _cli(broker, "encrypt-file", str(plain), str(sealed), "--key", key, "--context", "app=files",
                "--frame-size", "256KiB")
    assert done.returncode == 0, done.stderr
    assert sealed.stat().st_size > plain.stat().st_size
    done = _cli(broker, "decrypt-file", str(sealed), str(back), "--context", "app=files")
    assert done.returncode == 0, done.stderr
    assert back.read_bytes() == plain.read_bytes()


@pytest.mark.parametrize("damage", ["truncate", "flip", "context"])
def test_decrypt_file_refuses_damage_and_leaves_no_plaintext(broker: RunningBroker, key: str, tmp_path,
                                                             damage: str) -> None:
    plain, sealed, back = tmp_path / "in.bin", tmp_path / "in.kmbe", tmp_path / "out.bin"
    plain.write_bytes(os.urandom(600_000))
    assert _cli(broker, "encrypt-file", str(plain), str(sealed), "--key", key, "--frame-size", "64KiB",
                "--context", "app=files").returncode == 0
    data = sealed.read_bytes()
    args = ["--context", "app=files"]
    if damage == "truncate":
        sealed.write_bytes(data[:-100])
    elif damage == "flip":
        sealed.write_bytes(data[:-50] + bytes([data[-50] ^ 1]) + data[-49:])
    else:
        args = ["--context", "app=other"]
    done = _cli(broker, "decrypt-file", str(sealed), str(back), *args)
    assert done.returncode == 1
    assert b"Traceback" not in done.stderr and b"InvalidCiphertextException" in done.stderr
    assert not back.exists() and list(tmp_path.glob(".out.bin.*")) == []


def test_encrypt_file_errors_are_one_clean_line(broker: RunningBroker, tmp_path) -> None:
    done = _cli(broker, "encrypt-file", str(tmp_path / "missing"), str(tmp_path / "o"), "--key", "alias/nope")
    assert done.returncode != 0 and b"Traceback" not in done.stderr and b"cannot read" in done.stderr
    (tmp_path / "f").write_bytes(b"x")
    done = _cli(broker, "encrypt-file", str(tmp_path / "f"), str(tmp_path / "o"), "--key", "alias/nope")
    assert done.returncode == 1 and b"NotFoundException" in done.stderr and not (tmp_path / "o").exists()
