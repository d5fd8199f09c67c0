"""String formats as regular expressions, so that a grammar enforces them.

Each pattern matches only strings that the format's definition accepts (RFC 3339 dates and
times, RFC 3986 URIs, RFC 1123 host names, RFC 4122 UUIDs, IPv4 dotted quads, IPv6 text forms);
some are a strict subset of the format (named below), never a superset, so every generated
string passes `jsonschema`'s FormatChecker. Formats no checker knows (`int32`, `color`, ...) are
annotations and are ignored; known ones with no pattern here (`regex`, `uri-template`, ...) stay
as `format` and are refused by the backend check.

Subsets: years 1000–9999; no leap second; `T`/`Z` upper case; e-mail local parts of at most
32 letters, digits and `._%+-`; host names of at most four labels of at most 22 characters
(xgrammar compiles long counted repetition slowly); IPv6 without an embedded IPv4 tail or
zone; URIs with a scheme and `//` authority (no IP literal); IRIs and IDN forms as their ASCII
forms.
"""

from __future__ import annotations

_MONTH_DAY = "(0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8])"
_LEAP_YEAR = "[1-9][0-9](0[48]|[2468][048]|[13579][26])|([2468][048]|[13579][26])00"
DATE = f"([1-9][0-9]{{3}}-({_MONTH_DAY})|({_LEAP_YEAR})-02-29)"
TIME = "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
_DUR_TIME = "T([0-9]+H([0-9]+M([0-9]+S)?)?|[0-9]+M([0-9]+S)?|[0-9]+S)"
DURATION = f"P(([0-9]+Y([0-9]+M([0-9]+D)?)?|[0-9]+M([0-9]+D)?|[0-9]+D)({_DUR_TIME})?|{_DUR_TIME}|[0-9]+W)"
_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?"
HOSTNAME = f"{_LABEL}(\\.{_LABEL}){{0,3}}"
EMAIL = f"[A-Za-z0-9]([A-Za-z0-9._%+-]{{0,30}}[A-Za-z0-9])?@{_LABEL}(\\.{_LABEL}){{1,3}}"
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = f"{_OCTET}(\\.{_OCTET}){{3}}"
_H = "[0-9a-fA-F]{1,4}"


def _ipv6() -> str:
    forms = [f"{_H}(:{_H}){{7}}", f"::({_H}(:{_H}){{0,6}})?"]
    for left in range(1, 8):
        head = _H if left == 1 else f"{_H}(:{_H}){{{left - 1}}}"
        room = 7 - left
        tail = f"({_H}(:{_H}){{0,{room - 1}}})?" if room > 0 else ""
        forms.append(f"{head}::{tail}")
    return "(" + "|".join(forms) + ")"


IPV6 = _ipv6()
UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_PCHAR = "([A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
_PCHAR_NC = "([A-Za-z0-9._~!$&'()*+,;=@-]|%[0-9A-Fa-f]{2})"
_QUERY_FRAGMENT = f"(\\?({_PCHAR}|[/?])*)?(#({_PCHAR}|[/?])*)?"
URI = f"[A-Za-z][A-Za-z0-9+.-]*://{HOSTNAME}(:[0-9]{{1,5}})?(/{_PCHAR}*)*{_QUERY_FRAGMENT}"
_RELATIVE = f"(/?{_PCHAR_NC}+(/{_PCHAR}*)*|/)?{_QUERY_FRAGMENT}"
URI_REFERENCE = f"({URI}|{_RELATIVE})"
JSON_POINTER = '(/([^/~"\\\\\\x00-\\x1f]|~[01])*)*'

FORMAT_PATTERNS = {
    "date-time": f"{DATE}T{TIME}",
    "date": DATE,
    "time": TIME,
    "duration": DURATION,
    "email": EMAIL,
    "idn-email": EMAIL,
    "hostname": HOSTNAME,
    "idn-hostname": HOSTNAME,
    "ipv4": IPV4,
    "ipv6": IPV6,
    "uri": URI,
    "iri": URI,
    "uri-reference": URI_REFERENCE,
    "iri-reference": URI_REFERENCE,
    "uuid": UUID,
    "json-pointer": JSON_POINTER,
}
# Formats a FormatChecker may check that no pattern above covers: refused rather than ignored.
UNENFORCED_FORMATS = frozenset({"regex", "uri-template", "relative-json-pointer", "color"})


def format_pattern(name: str) -> str | None:
    """The anchored pattern for format `name`, or None when it has none."""
    body = FORMAT_PATTERNS.get(name)
    return None if body is None else f"^{body}$"


def lower_format(node: dict) -> dict:
    """`node` with its `format` turned into a `pattern` (formats apply to strings only, as
    patterns do); an unknown format is dropped; a known unenforced one, or one beside an existing
    pattern, is kept for the backend check to refuse."""
    name = node.get("format")
    if "format" not in node or not isinstance(name, str):
        return node
    out = dict(node)
    pattern = format_pattern(name)
    if pattern is None:
        if name not in UNENFORCED_FORMATS:
            del out["format"]
        return out
    if "pattern" not in out:
        del out["format"]
        out["pattern"] = pattern
    return out
