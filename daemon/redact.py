"""Keeping secrets out of what we print, log and store.

A database URL carries its password (`postgresql+psycopg://fleet:PASSWORD@db/fleet`);
`mask_url` is the one function every output path uses before a URL leaves the
process: command output, log lines, error messages, store rows, metrics.
`redact` scrubs known secret values out of free text (an exception message that
quotes a DSN, a provider's error that echoes a key).

Only the standard library: `fleetctl status` imports this on its fast path.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"

# Query parameters that hold a credential in SQLAlchemy / libpq / HTTP URLs.
_SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "sslpassword", "token", "access_token", "secret",
                            "api_key", "apikey", "key", "sig", "signature", "x-amz-signature", "auth"})
# user:password@ in anything that looks like scheme://... (also when urlsplit would choke on it).
_USERINFO = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<pw>[^@\s]*)@")
_PARAM = re.compile(r"(?P<pre>[?&;](?P<k>[^=&;#\s]+)=)(?P<v>[^&;#\s]*)")


def mask_url(url: str | None) -> str | None:
    """The URL with its password (and credential query parameters) replaced by `***`.

    `postgresql+psycopg://fleet:pw@db:5432/fleet?sslmode=require` ->
    `postgresql+psycopg://fleet:***@db:5432/fleet?sslmode=require`. A URL without
    a password comes back unchanged; so does a SQLite path.
    """
    if url is None:
        return None
    text = str(url)
    out = _USERINFO.sub(lambda m: f"{m.group('pre')}:{MASK}@", text)
    return _PARAM.sub(lambda m: m.group("pre") + (MASK if m.group("k").lower() in _SECRET_PARAMS and m.group("v")
                                                  else m.group("v")), out)


def url_secrets(url: str | None) -> list[str]:
    """The secret values inside a URL (password, credential parameters), for `redact`."""
    if not url:
        return []
    out = []
    m = _USERINFO.search(str(url))
    if m and m.group("pw"):
        out += [m.group("pw"), unquote(m.group("pw"))]
    try:
        query = urlsplit(str(url)).query
    except ValueError:
        query = ""
    out += [v for k, v in parse_qsl(query) if k.lower() in _SECRET_PARAMS and v]
    return sorted(set(out), key=len, reverse=True)


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """`text` with every URL masked and every known secret value replaced by `***`."""
    out = mask_url(text) or ""
    for s in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        out = out.replace(s, MASK)
    return out


def mask_urls_in(value):
    """A copy of a JSON-like value with every string that holds a URL masked (store rows, summaries)."""
    if isinstance(value, str):
        return mask_url(value) if "://" in value else value
    if isinstance(value, dict):
        return {k: mask_urls_in(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_urls_in(v) for v in value]
    return value
