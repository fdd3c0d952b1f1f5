"""Redaction of credentials in text: every shape of password a Redis (or any) URL can carry (pure)."""

import logging
from urllib.parse import urlsplit

import pytest
import redis

from api.release.redact import RedactingFilter, plain_message, redact

SECRET = "s3cret"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://:p@ss@host:6379/0", "redis://***@host:6379/0"),  # the password holds an "@": up to the last one
        ("redis://user:p@ss@w@rd@host/0", "redis://***@host/0"),
        ("redis://:it's@host:6379", "redis://***@host:6379"),
        ('redis://:say "hi"@host:6379', "redis://***@host:6379"),
        ("redis://:two words@host:6379/0", "redis://***@host:6379/0"),
        ("redis://:a/b/c@host:6379/0", "redis://***@host:6379/0"),
        ("redis://:%2Fenc%40oded@host", "redis://***@host"),
        ("rediss://default:pw@h1:6380 and redis://:pw@h2:6379", "rediss://***@h1:6380 and redis://***@h2:6379"),
        ("redis://host:6379/0?password=secret", "redis://host:6379/0?password=***"),
        ("redis://host:6379/0?db=1&password=secret&ssl=true", "redis://host:6379/0?db=1&password=***&ssl=true"),
        ("redis://host?PASSWORD=secret#x", "redis://host?PASSWORD=***#x"),
        ("redis://u@host?password=se%20cret", "redis://***@host?password=***"),
        ("options: host=db password='two words' port=5432", "options: host=db password=*** port=5432"),
        ('options: password="q" sslmode=require', "options: password=*** sslmode=require"),
        ("REDIS_PASSWORD=secret next", "REDIS_PASSWORD=*** next"),
        (
            "cannot reach redis://:pw@host\nhttp://host:5000/x?a=b@c",
            "cannot reach redis://***@host\nhttp://host:5000/x?a=b@c",
        ),
    ],
)
def test_every_password_shape_is_redacted(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "password",
    ["p@ss", "it's", 'say "hi"', "two words", "a/b", "@@", "p:w", "sp ace@'/\"mix"],
)
def test_a_password_is_gone_from_the_url_and_the_host_kept(password):
    url = f"redis://default:{password}@cache.internal:6379/0"
    shown = redact(f"error connecting to {url}: refused")
    assert shown == "error connecting to redis://***@cache.internal:6379/0: refused"
    assert password not in shown
    assert plain_message(url) == "redis://***@cache.internal:6379/0"


@pytest.mark.parametrize("password", ["p@ss", "it's", 'say "hi"', "two words"])
def test_the_password_redacted_is_the_one_redis_reads(password):
    # redis-py (urllib.parse underneath) takes everything up to the last "@" of the authority as user-info
    url = f"redis://:{password}@host:6379/0"
    assert urlsplit(url).password == password and urlsplit(url).hostname == "host"
    assert redis.connection.parse_url(url)["password"] == password
    assert redact(url) == "redis://***@host:6379/0"


def test_a_query_password_is_the_one_redis_reads():
    url = f"redis://host:6379/0?password={SECRET}"
    assert redis.connection.parse_url(url)["password"] == SECRET
    assert SECRET not in redact(url) and redact(url).startswith("redis://host:6379/0?password=")


@pytest.mark.parametrize(
    "text",
    [
        "http://host:5000/x?a=b@c",  # an "@" in a query: not user-info
        "http://host:5000/runs#anchor@x",
        "mail ops@example.com about http://host:5000",
        "no uri here",
        "a passwordless setup",
        "password is required",
    ],
)
def test_text_without_credentials_is_kept(text):
    assert redact(text) == text


def test_the_logging_filter_redacts_every_shape():
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "lost %s and %s", ("redis://:p@ss@h", "?password=q"), None
    )
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "lost redis://***@h and ?password=***"
