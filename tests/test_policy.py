"""Pure rules of the hostile-internet defences: retry policy, Retry-After, opt-out, private addresses."""

from __future__ import annotations

import email.utils
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgfetch.fetch.common import is_blocked_address, opted_out
from imgfetch.fetch.policy import (
    MAX_RETRY_AFTER,
    RETRYABLE_STATUSES,
    backoff_delay,
    is_retryable,
    parse_retry_after,
)

NOW = 1_700_000_000.0  # a fixed "current time", so date arithmetic is exact

# --- is_retryable ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("http-429", True),
        ("http-503", True),
        ("http-500", True),
        ("http-408", True),
        ("http-404", False),
        ("http-403", False),
        ("http-400", False),
        ("http-501", False),
        ("http-", False),
        ("http-abc", False),
        ("connection-error", True),
        ("connect-timeout", True),
        ("read-timeout", True),
        ("timeout", True),
        ("truncated", True),
        ("proxy-error", True),
        ("dns-error", False),
        ("blocked-address", False),
        ("too-large", False),
        ("opted-out", False),
        ("unsupported-scheme", False),
        ("not-an-image", False),
        (None, False),
    ],
)
def test_is_retryable(reason: str | None, expected: bool) -> None:
    assert is_retryable(reason) is expected


def test_every_retryable_status_is_a_server_or_throttling_status() -> None:
    assert all(code in (408, 425, 429) or code >= 500 for code in RETRYABLE_STATUSES)


# --- backoff_delay ---------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 10])
def test_backoff_is_capped_exponential_with_equal_jitter(attempt: int) -> None:
    step = min(30.0, 0.5 * 2 ** (attempt - 1))
    low = backoff_delay(attempt, base=0.5, cap=30.0, rng=lambda: 0.0)
    high = backoff_delay(attempt, base=0.5, cap=30.0, rng=lambda: 1.0)
    assert low == pytest.approx(step / 2)
    assert high == pytest.approx(step)


def test_backoff_grows_then_stops_at_the_cap() -> None:
    fixed = [backoff_delay(a, base=1.0, cap=8.0, rng=lambda: 0.5) for a in range(1, 8)]
    assert fixed == sorted(fixed)
    assert max(fixed) == pytest.approx(8.0 * 0.75)


@pytest.mark.parametrize("attempt", [64, 1025, 10**6])
def test_backoff_survives_absurd_attempt_numbers(attempt: int) -> None:
    # ``--retries 2000`` once meant math.pow(2, 1999): an OverflowError on every failing row.
    assert backoff_delay(attempt, base=0.5, cap=30.0, rng=lambda: 1.0) == pytest.approx(30.0)


def test_retry_after_wins_when_longer_but_is_capped() -> None:
    assert backoff_delay(1, base=0.5, cap=30.0, retry_after=7.0, rng=lambda: 1.0) == 7.0
    assert backoff_delay(1, base=0.5, cap=30.0, retry_after=3600.0, max_retry_after=60.0) == 60.0
    # A short Retry-After never shortens the backoff below its own step.
    assert backoff_delay(5, base=0.5, cap=30.0, retry_after=0.0, rng=lambda: 0.0) == pytest.approx(4.0)


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(1, 10**4),
    base=st.floats(0.001, 10.0),
    cap=st.floats(0.001, 120.0),
    retry_after=st.none() | st.floats(0.0, 1e9),
    max_retry_after=st.floats(0.0, 600.0),
    jitter=st.floats(0.0, 1.0),
)
def test_backoff_is_always_finite_and_bounded(
    attempt: int, base: float, cap: float, retry_after: float | None, max_retry_after: float, jitter: float
) -> None:
    delay = backoff_delay(
        attempt,
        base=base,
        cap=cap,
        retry_after=retry_after,
        max_retry_after=max_retry_after,
        rng=lambda: jitter,
    )
    assert math.isfinite(delay)
    assert 0.0 <= delay <= max(cap, max_retry_after if retry_after is not None else 0.0) + 1e-9


# --- parse_retry_after -----------------------------------------------------------------


def _http_date(offset: float) -> str:
    return email.utils.formatdate(NOW + offset, usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("  5 ", 5.0),
        ("1.5", 1.5),  # not RFC 9110, but seen in the wild and unambiguous
        (_http_date(30), 30.0),
        (_http_date(-30), 0.0),  # a date in the past: retry now
        ("Tue, 14 Nov 2023 22:13:50 GMT", 30.0),  # IMF-fixdate
        ("Tuesday, 14-Nov-23 22:13:50 GMT", 30.0),  # obsolete RFC 850 form
        ("Tue Nov 14 22:13:50 2023", 30.0),  # obsolete asctime form: no zone, means GMT
        (None, None),
        ("", None),
        ("soon", None),
        ("-1", None),
        ("0x10", None),
        ("1e3", None),
        ("inf", None),
        ("nan", None),
        ("²", None),  # str.isdigit() is True for these; float() used to raise or misread them
        ("١٢", None),
        ("１２", None),
        ("Mon, 01 Jan 99999 00:00:00 GMT", None),
        ("Mon, 32 Foo 2023 25:61:61 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    got = parse_retry_after(value, NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_huge_retry_after_is_finite() -> None:
    got = parse_retry_after("9" * 400, NOW)
    assert got == MAX_RETRY_AFTER
    far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", NOW)
    assert far == MAX_RETRY_AFTER


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=60) | st.from_regex(r"\A[A-Za-z]{3}, \d{1,2} [A-Za-z]{3} \d{1,6} [\d:]{1,9} \w{0,5}\Z")
)
def test_parse_retry_after_never_raises(value: str) -> None:
    got = parse_retry_after(value, NOW)
    assert got is None or (math.isfinite(got) and 0.0 <= got <= MAX_RETRY_AFTER)


# --- X-Robots-Tag opt-out --------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["noai"], "noai"),
        (["NoAI"], "noai"),
        (["noimageai"], "noimageai"),
        (["noindex"], "noindex"),
        (["noimageindex"], "noimageindex"),
        (["none"], "none"),
        (["nofollow, noindex"], "noindex"),
        (["imgfetch: noai"], "noai"),
        (["imgfetch:noimageai"], "noimageai"),
        (["IMGFETCH: NoIndex"], "noindex"),
        (["otherbot: nofollow, imgfetch: noimageai"], "noimageai"),
        (["noai, otherbot: noindex"], "noai"),
        (["otherbot: noai", "noindex"], "noindex"),  # a scope ends with its header line
        (["max-snippet:-1, noai"], "noai"),
        (["imgfetch: max-snippet: 20, noai"], "noai"),
        # Not for us, or not an opt-out at all:
        (["otherbot: noindex"], None),
        (["otherbot: noindex, noai"], None),  # the scope lasts until the next scope
        (["otherbot: noai", "nofollow"], None),
        (["googlebot: noindex", "imgfetch: all"], None),
        (["max-image-preview: none"], None),  # "none" is a value here, not the directive
        (["max-image-preview:none, nofollow"], None),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None),
        (["all"], None),
        (["nofollow", "noarchive"], None),
        ([""], None),
        ([" , ,"], None),
        ([], None),
    ],
)
def test_opted_out(values: list[str], expected: str | None) -> None:
    assert opted_out(values) == expected


def test_opt_out_after_a_date_with_a_comma() -> None:
    assert opted_out(["unavailable_after: Friday, 25-Jun-10 15:00:00 PST, noai"]) == "noai"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=4))
def test_opted_out_never_raises(values: list[str]) -> None:
    got = opted_out(values)
    assert got is None or got in {"noai", "noimageai", "noindex", "noimageindex", "none"}


# --- is_blocked_address (--block-private) ----------------------------------------------

BLOCKED = [
    "127.0.0.1",
    "127.1.2.3",
    "0.0.0.0",  # connect() to it reaches the local host on Linux
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # AWS, GCP, Azure metadata
    "169.254.0.1",
    "100.64.0.1",  # carrier-grade NAT
    "100.100.100.200",  # Alibaba Cloud metadata (in 100.64/10)
    "192.0.0.1",
    "198.18.0.1",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:10.1.2.3",
    "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 wrapping 169.254.169.254
    "not-an-address",
    "",
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize("address", BLOCKED)
def test_private_and_special_addresses_are_blocked(address: str) -> None:
    assert is_blocked_address(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_blocked_address(address)


@pytest.mark.parametrize("address", ["::7f00:1", "::a9fe:a9fe", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe"])
def test_addresses_embedding_private_ipv4_are_blocked(address: str) -> None:
    assert is_blocked_address(address)
