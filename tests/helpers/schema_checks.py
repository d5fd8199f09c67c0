"""Validation of generated JSON against the schema it was asked for: the schema's own draft
(`$schema`, else 2020-12) and every format checked, including those jsonschema checks only with
optional packages this environment lacks (date-time, time, duration, hostname, uri,
uri-reference), by the definitions in RFC 3339, RFC 1123 and RFC 3986."""

from __future__ import annotations

import datetime
import re
import urllib.parse
from typing import Any

import jsonschema

_RFC3339_TIME = re.compile(r"\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")
_DURATION = re.compile(r"P(?:(\d+Y)?(\d+M)?(\d+D)?)(?:T(\d+H)?(\d+M)?(\d+S)?)?")
_URI_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def strict_format_checker(cls: Any = jsonschema.Draft202012Validator) -> jsonschema.FormatChecker:
    """The format checker of validator class `cls`'s draft, with the checks above added."""
    checker = jsonschema.FormatChecker()
    checker.checkers = dict(cls.FORMAT_CHECKER.checkers)
    checker.checks("date-time")(_date_time)
    checker.checks("time")(_time)
    checker.checks("duration")(_duration)
    checker.checks("hostname")(_hostname)
    checker.checks("uri")(_uri)
    checker.checks("uri-reference")(_uri_reference)
    checker.checks("email")(lambda s: not isinstance(s, str) or (s.count("@") == 1 and all(s.split("@"))))
    return checker


def is_valid(instance: Any, schema: Any) -> bool:
    return next(iter_errors(instance, schema), None) is None


def iter_errors(instance: Any, schema: Any) -> Any:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=strict_format_checker(cls)).iter_errors(instance)


def _date_time(s: Any) -> bool:
    if not isinstance(s, str):
        return True
    date, sep, time = s.partition("T") if "T" in s else s.partition("t")
    return bool(sep) and _date(date) and _time(time)


def _date(s: str) -> bool:
    try:
        return re.fullmatch(r"\d{4}-\d\d-\d\d", s) is not None and bool(datetime.date.fromisoformat(s))
    except ValueError:
        return False


def _time(s: Any) -> bool:
    if not isinstance(s, str):
        return True
    if not _RFC3339_TIME.fullmatch(s):
        return False
    try:
        datetime.time.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return True


def _duration(s: Any) -> bool:
    if not isinstance(s, str):
        return True
    if re.fullmatch(r"P\d+W", s):
        return True
    match = _DURATION.fullmatch(s)
    if not match or s in ("P", "PT") or s.endswith("T"):
        return False
    return _no_gaps(match.groups()[:3]) and _no_gaps(match.groups()[3:])


def _no_gaps(parts: tuple) -> bool:
    """RFC 3339's duration grammar: the units present in one part are consecutive."""
    present = [i for i, p in enumerate(parts) if p]
    return not present or present == list(range(present[0], present[-1] + 1))


def _hostname(s: Any) -> bool:
    if not isinstance(s, str):
        return True
    return 0 < len(s) <= 253 and all(_LABEL.fullmatch(label) for label in s.split("."))


def _uri(s: Any) -> bool:
    if not isinstance(s, str):
        return True
    scheme = urllib.parse.urlsplit(s).scheme
    has_scheme = bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme)) and s.lower().startswith(scheme + ":")
    return has_scheme and _uri_reference(s)


def _uri_reference(s: Any) -> bool:
    return not isinstance(s, str) or _URI_CHARS.fullmatch(s) is not None
