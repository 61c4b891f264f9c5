"""Escher signing: the spec's worked example, the Escher/AWS4 test vector, and the verifier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.sinks.escher import (
    EscherConfig,
    EscherError,
    EscherSigner,
    antavo_config,
    canonical_path,
    canonical_query,
    parse_date,
    verify,
)

NOON = datetime(2018, 12, 7, 12, 0, 0, tzinfo=UTC)
BODY = b'{"customer":"cust-001","action":"checkout","data":{"transaction_id":"T-1001","total":100}}'


def test_worked_example_of_the_spec_byte_for_byte() -> None:
    signer = EscherSigner(antavo_config("demo"), "API_KEY", "SECRET", clock=lambda: NOON)
    signed = signer.sign("POST", "https://api.demo.antavo.com/events", BODY)
    assert signed.canonical_request == (
        "POST\n/events\n\ndate:20181207T120000Z\nhost:api.demo.antavo.com\n\ndate;host\n"
        "9f95b894c36525ae681dd920f95021068900ceb1360b484a94e42afd98288088"
    )
    assert signed.string_to_sign == (
        "ANTAVO-HMAC-SHA256\n20181207T120000Z\n20181207/demo/api/antavo_request\n"
        "a8f8c04eeb08db246036a202dba58d5019dd5b76ec2bf3d73cdc62c33df75cc9"
    )
    assert signed.headers == {
        "Host": "api.demo.antavo.com",
        "Date": "20181207T120000Z",
        "Authorization": "ANTAVO-HMAC-SHA256 Credential=API_KEY/20181207/demo/api/antavo_request, "
        "SignedHeaders=date;host, "
        "Signature=21610ad30c8485f06c00aa1b547e099b7525d5820cd9294012a57898adb9882b",
    }


def test_escher_test_suite_vector_post_header_value_spaces() -> None:
    # emartech/escher-test-suite test_cases/signrequest-post-header-value-spaces.json (AWS4 prefix)
    config = EscherConfig(credential_scope="us-east-1/host/aws4_request", algo_prefix="AWS4")
    signer = EscherSigner(config, "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    signed = signer.sign(
        "POST",
        "http://host.foo.com/",
        b"foo=bar",
        {"Content-Type": "application/x-www-form-urlencoded;         charset=utf8"},
        extra_signed=["content-type"],
        moment=datetime(2011, 9, 9, 23, 36, tzinfo=UTC),
        date_value="Mon, 09 Sep 2011 23:36:00 GMT",
    )
    assert signed.canonical_request == (
        "POST\n/\n\ncontent-type:application/x-www-form-urlencoded; charset=utf8\n"
        "date:Mon, 09 Sep 2011 23:36:00 GMT\nhost:host.foo.com\n\ncontent-type;date;host\n"
        "3ba8907e7a252327488df390ed517c45b96dead033600219bdca7107d1d3f88a"
    )
    assert signed.string_to_sign == (
        "AWS4-HMAC-SHA256\n20110909T233600Z\n20110909/us-east-1/host/aws4_request\n"
        "c4115f9e54b5cecf192b1eaa23b8e88ed8dc5391bd4fde7b3fff3d9c9fe0af1f"
    )
    assert signed.headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20110909/us-east-1/host/aws4_request, "
        "SignedHeaders=content-type;date;host, "
        "Signature=b105eb10c6d318d2294de9d49dd8b031b55e3c3fe139f2e637da70511e9e7b71"
    )


def test_date_header_forms_real_clients_send_parse_to_the_same_moment() -> None:
    for text in ("20181207T120000Z", "Fri, 07 Dec 2018 12:00:00 GMT", "2018-12-07T12:00:00+00:00",
                 "2018-12-07T13:00:00+01:00"):
        assert parse_date(text) == NOON
    with pytest.raises(ValueError):
        parse_date("yesterday")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", "/"), ("/a//b/./c/../d", "/a/b/d"), ("/events", "/events"), ("/a/b/", "/a/b/")],
)
def test_canonical_path(raw: str, expected: str) -> None:
    assert canonical_path(raw) == expected


def test_canonical_query_sorts_and_encodes() -> None:
    assert canonical_query("b=2&a=x y&c=&a=%41") == "a=A&a=x%20y&b=2&c="
    assert canonical_query("") == ""


# ---- verifier ---------------------------------------------------------------------------------------

KEYS = {"API_KEY": "SECRET"}
CONFIG = antavo_config("demo")
URL = "https://api.demo.antavo.com/events"


def _signed(**changes: object) -> tuple[list[tuple[str, str]], bytes]:
    signer = EscherSigner(CONFIG, "API_KEY", "SECRET", clock=lambda: NOON)
    headers = signer.sign("POST", URL, BODY, {"Content-Type": "application/json"}).headers
    return list(headers.items()), BODY


def _verify(headers: list[tuple[str, str]], body: bytes = BODY, now: datetime = NOON,
            keys: dict[str, str] = KEYS, config: EscherConfig = CONFIG, path: str = "/events") -> str:
    return verify(config, keys, "POST", path, "", headers, body, now)


def _replace(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k.lower() == name.lower() else v) for k, v in headers]


def test_verifier_accepts_a_correct_signature_and_names_the_key() -> None:
    headers, body = _signed()
    assert _verify(headers, body) == "API_KEY"
    assert _verify(headers, body, now=NOON + timedelta(seconds=299)) == "API_KEY"


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda h: (h, BODY + b" "), "The signatures do not match"),
        (lambda h: (_replace(h, "Date", "20181207T120001Z"), BODY), "The signatures do not match"),
        (lambda h: (_replace(h, "Host", "api.evil.antavo.com"), BODY), "The signatures do not match"),
        (lambda h: ([(k, v.replace("API_KEY/", "OTHER/")) for k, v in h], BODY), "Invalid Escher key"),
        (lambda h: (_replace(h, "Date", "20181208T120000Z"), BODY),
         "The credential date does not match with the request date"),
        (lambda h: ([(k, v.replace("SignedHeaders=date;host", "SignedHeaders=date")) for k, v in h],
                    BODY), "The host header is not signed"),
        (lambda h: ([(k, v.replace("SignedHeaders=date;host", "SignedHeaders=host")) for k, v in h],
                    BODY), "The date header is not signed"),
        (lambda h: ([(k, v.replace("demo/api", "prod/api")) for k, v in h], BODY),
         "The credential scope is invalid"),
        (lambda h: (_replace(h, "Authorization", "Bearer abc"), BODY), "Could not parse auth header"),
        (lambda h: ([(k, v) for k, v in h if k != "Date"], BODY), "The date header is missing"),
        (lambda h: ([(k, v.replace("SHA256", "MD5")) for k, v in h], BODY),
         "Only SHA256 and SHA512 hash algorithms are allowed"),
    ],
    ids=["body", "date", "host", "key", "credential-date", "host-unsigned", "date-unsigned", "scope",
         "garbage", "date-missing", "hash"],
)
def test_verifier_rejects_each_tampering(tamper: object, message: str) -> None:
    headers, _ = _signed()
    changed_headers, changed_body = tamper(headers)  # type: ignore[operator]
    with pytest.raises(EscherError) as caught:
        _verify(changed_headers, changed_body)
    assert caught.value.message == message


def test_verifier_rejects_a_request_outside_the_clock_skew() -> None:
    headers, body = _signed()
    with pytest.raises(EscherError, match="not within the accepted time range"):
        _verify(headers, body, now=NOON + timedelta(seconds=301))
    with pytest.raises(EscherError, match="not within the accepted time range"):
        _verify(headers, body, now=NOON - timedelta(seconds=301))
    wide = antavo_config("demo", clock_skew_seconds=900)
    assert _verify(headers, body, now=NOON + timedelta(seconds=600), config=wide) == "API_KEY"


def test_verifier_rejects_the_wrong_secret() -> None:
    headers, body = _signed()
    with pytest.raises(EscherError, match="signatures do not match"):
        _verify(headers, body, keys={"API_KEY": "OTHER"})


def test_verifier_honours_extra_signed_headers_and_rfc1123_dates() -> None:
    signer = EscherSigner(CONFIG, "API_KEY", "SECRET", clock=lambda: NOON, date_style="rfc1123")
    signed = signer.sign("POST", URL, BODY, {"Content-Type": "application/json"},
                         extra_signed=["content-type"])
    assert signed.headers["Date"] == "Fri, 07 Dec 2018 12:00:00 GMT"
    headers = list(signed.headers.items())
    assert _verify(headers) == "API_KEY"
    with pytest.raises(EscherError, match="signatures do not match"):
        _verify(_replace(headers, "Content-Type", "text/plain"))


def test_signer_repr_hides_the_secret() -> None:
    assert "SECRET" not in repr(EscherSigner(CONFIG, "API_KEY", "SECRET"))
