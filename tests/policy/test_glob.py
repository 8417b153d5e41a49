from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outrelay.policy import glob_match


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("", "", True),
        ("", "a", False),
        ("abc", "abc", True),
        ("abc", "ABC", False),
        ("*", "", True),
        ("*", "anything/at/all", True),
        ("svc-*", "svc-", True),
        ("svc-*", "svc-web", True),
        ("svc-*", "sv", False),
        ("outrelay://acme/*", "outrelay://acme/agent/1", True),
        ("outrelay://acme/*", "outrelay://other/agent/1", False),
        ("*-db", "orders-db", True),
        ("a*b*c", "abc", True),
        ("a*b*c", "aXbYc", True),
        ("a*b*c", "acb", False),
        ("ab*ba", "aba", False),  # first and last pieces may not overlap
        ("a**b", "ab", True),
        ("*x*", "yyxyy", True),
        ("*x*", "yyy", False),
        ("a*a*a", "aaa", True),
        ("a*a*a", "aa", False),
    ],
)
def test_table(pattern: str, subject: str, expected: bool) -> None:
    assert glob_match(pattern, subject) is expected


_alphabet = st.text(alphabet="ab*/", max_size=8)


@given(_alphabet, st.text(alphabet="ab/", max_size=10))
def test_agrees_with_regex(pattern: str, subject: str) -> None:
    regex = ".*".join(re.escape(piece) for piece in pattern.split("*"))
    assert glob_match(pattern, subject) is (re.fullmatch(regex, subject, re.S) is not None)
