"""headway.webhooks: sign() and verify() agree, and verify() refuses everything else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import headway
from headway import webhooks

NOW = 1_760_000_000
BODY = json.dumps({"id": "tr_1", "type": "milestone.achieved", "subject": "u1"}).encode()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
secrets = st.text(min_size=1, max_size=64) | st.binary(min_size=1, max_size=64)


@given(secret=secrets, payload=json_values, timestamp=st.integers(0, 2**40))
def test_any_body_and_secret_round_trip(secret: str | bytes, payload: object, timestamp: int) -> None:
    body = json.dumps(payload).encode()
    header = webhooks.sign(secret, body, timestamp)
    assert webhooks.verify(secret, {"Headway-Signature": header}, body, now=timestamp) == payload


@given(secret=secrets, payload=json_values, data=st.data())
def test_any_single_byte_change_fails(secret: str | bytes, payload: object, data: st.DataObject) -> None:
    body = json.dumps(payload).encode()
    header = webhooks.sign(secret, body, NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    delta = data.draw(st.integers(1, 255))
    changed = bytearray(body)
    changed[index] = (changed[index] + delta) % 256
    with pytest.raises(headway.WebhookVerificationError):
        webhooks.verify(secret, {"Headway-Signature": header}, bytes(changed), now=NOW)


@given(secret=secrets, data=st.data())
def test_any_change_to_the_signature_fails(secret: str | bytes, data: st.DataObject) -> None:
    header = webhooks.sign(secret, BODY, NOW)
    index = data.draw(st.integers(header.index("v1=") + 3, len(header) - 1))
    char = data.draw(st.characters(codec="utf-8").filter(lambda c: c != header[index]))
    changed = header[:index] + char + header[index + 1:]
    with pytest.raises(headway.WebhookVerificationError):
        webhooks.verify(secret, changed, BODY, now=NOW)


@given(secret=secrets, other=secrets)
def test_another_secret_fails(secret: str | bytes, other: str | bytes) -> None:
    key = secret.encode() if isinstance(secret, str) else secret
    other_key = other.encode() if isinstance(other, str) else other
    header = webhooks.sign(secret, BODY, NOW)
    if key == other_key:
        assert webhooks.verify(other, header, BODY, now=NOW)
    else:
        with pytest.raises(headway.WebhookVerificationError, match="no v1 signature matches"):
            webhooks.verify(other, header, BODY, now=NOW)


def test_signature_is_the_spec_formula() -> None:
    import hashlib
    import hmac

    expected = hmac.new(b"whsec", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert webhooks.sign("whsec", BODY, NOW) == f"t={NOW},v1={expected}"


def test_header_name_is_matched_without_case_and_the_value_works_alone() -> None:
    header = webhooks.sign("s", BODY, NOW)
    for headers in ({"headway-signature": header}, {"HEADWAY-SIGNATURE": header}, header):
        assert webhooks.verify("s", headers, BODY, now=NOW)["id"] == "tr_1"


def test_rotation_either_side() -> None:
    old, new = webhooks.sign("old", BODY, NOW), webhooks.sign("new", BODY, NOW)
    # the sender signs with both secrets while it rotates: a receiver with either accepts
    both = f"{old},v1={new.split('v1=')[1]}"
    assert webhooks.verify("old", both, BODY, now=NOW)
    assert webhooks.verify("new", both, BODY, now=NOW)
    # the receiver accepts both secrets while it rotates
    assert webhooks.verify(["new", "old"], old, BODY, now=NOW)
    with pytest.raises(headway.WebhookVerificationError):
        webhooks.verify(["a", "b"], old, BODY, now=NOW)


def test_timestamp_tolerance() -> None:
    header = webhooks.sign("s", BODY, NOW)
    assert webhooks.verify("s", header, BODY, now=NOW + 300)
    assert webhooks.verify("s", header, BODY, now=NOW - 300)  # a sender's clock a bit ahead
    for now in (NOW + 301, NOW - 301):
        with pytest.raises(headway.WebhookVerificationError, match="tolerance"):
            webhooks.verify("s", header, BODY, now=now)
    assert webhooks.verify("s", header, BODY, now=NOW + 3600, tolerance=7200)
    assert webhooks.verify("s", header, BODY, now=NOW + 10**9, tolerance=None)
    # the default clock is the real one: a fresh signature passes, an old one does not
    assert webhooks.verify("s", webhooks.sign("s", BODY), BODY)
    with pytest.raises(headway.WebhookVerificationError):
        webhooks.verify("s", header, BODY)


@pytest.mark.parametrize(
    "header",
    ["", "t=1", "v1=ab", f"t={NOW}", "t=x,v1=ab", f"t={NOW},t={NOW},v1=ab", "garbage",
     f"t=-{NOW},v1=ab", f"t={NOW},v0=ab", "t=\u0661\u0662,v1=ab", f"t={NOW},v1=\u00e9\udc80"],
)
def test_malformed_headers_are_refused(header: str) -> None:
    with pytest.raises(headway.WebhookVerificationError):
        webhooks.verify("s", {"Headway-Signature": header}, BODY, now=NOW)


def test_missing_header_and_bad_json() -> None:
    with pytest.raises(headway.WebhookVerificationError, match="no Headway-Signature"):
        webhooks.verify("s", {"Content-Type": "application/json"}, BODY, now=NOW)
    with pytest.raises(headway.WebhookVerificationError, match="not JSON"):
        webhooks.verify("s", webhooks.sign("s", b"{nope", NOW), b"{nope", now=NOW)
    error = headway.WebhookVerificationError("x")
    assert isinstance(error, headway.HeadwayError)


def test_unknown_schemes_are_ignored() -> None:
    header = webhooks.sign("s", BODY, NOW) + ",v2=future"
    assert webhooks.verify("s", header, BODY, now=NOW)


def test_bad_arguments_are_programming_errors() -> None:
    with pytest.raises(ValueError):
        webhooks.sign("", BODY, NOW)
    with pytest.raises(ValueError):
        webhooks.sign("s", BODY, -1)
    with pytest.raises(TypeError):
        webhooks.verify("s", webhooks.sign("s", BODY, NOW), {"not": "bytes"}, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        webhooks.verify([], webhooks.sign("s", BODY, NOW), BODY, now=NOW)
