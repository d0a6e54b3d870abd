"""Redaction of secrets in URLs and in text that may contain URLs.

Every place that shows a URL (errors, warnings, logs, summaries) goes through :func:`redact_url`
or :func:`redact`: the userinfo of ``scheme://user:password@host`` and the values of query
parameters that carry secrets (``signature``, ``apiKey``, ``token``, ``password``...) become
``***``. Plugins and sinks import both from :mod:`forge_core`.
"""

from __future__ import annotations

import re

MASK = "***"

# query parameter names (compared lower-case, without ``-`` and ``_``) whose values are secret
SECRET_NAMES = frozenset({
    "signature", "sig", "sign", "apikey", "key", "accesskey", "secretkey", "apisecret", "secret",
    "clientsecret", "token", "accesstoken", "refreshtoken", "authtoken", "idtoken", "sessiontoken",
    "auth", "authorization", "password", "passwd", "pwd", "pass", "passphrase", "credential",
    "credentials", "session", "sessionid", "xapikey", "xamzsignature", "xamzcredential",
    "xamzsecuritytoken", "awsaccesskeyid",
})
_SECRET_PARTS = ("token", "secret", "passw", "signature", "apikey", "credential", "passphrase")

# scheme://[userinfo@]rest, up to whitespace or a quote/bracket that ends a URL in prose
_URL = re.compile(r"""\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^\s'"<>()\[\]{}]*)""")
# a ``name=value`` pair in free text (a query string shown without its URL)
_PAIR = re.compile(r"""(?<![\w-])([A-Za-z][\w.-]*)=([^&\s'"<>()\[\]{},;]+)""")


def is_secret_name(name: str) -> bool:
    """True if a query parameter (or header) of this name carries a secret value."""
    key = name.lower().replace("-", "").replace("_", "").replace(".", "")
    return key in SECRET_NAMES or any(part in key for part in _SECRET_PARTS)


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret query values replaced by ``***``.

    ``http://user:pw@host:8000/p?symbol=X&signature=ab`` -> ``http://***@host:8000/p?symbol=X&signature=***``.
    An ``@`` anywhere before the query masks everything from the scheme to the last ``@`` (a
    password with an unencoded ``/`` or ``@`` must not leak either)."""
    return redact(url)


def redact_host(url: str) -> str:
    """The ``host[:port]`` of ``url``, never its userinfo."""
    rest = url.partition("://")[2] or url
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    return head.rpartition("@")[2].split("/", 1)[0] if "@" in head else head.split("/", 1)[0]


def _url_match(match: re.Match[str]) -> str:
    scheme, rest = match.group(1), match.group(2)
    head, q, query = rest.partition("?")
    if "@" in head:
        head = f"{MASK}@{head.rpartition('@')[2]}"
    return scheme + head + q + query


def _pair_match(match: re.Match[str]) -> str:
    return f"{match.group(1)}={MASK}" if is_secret_name(match.group(1)) else match.group(0)


def redact(text: object) -> str:
    """``str(text)`` with every URL in it redacted (userinfo, secret query values) and every
    ``name=value`` pair whose name is a secret masked (a query string quoted without its URL,
    as ``requests`` does in its error messages)."""
    value = str(text)
    if "@" not in value and "=" not in value:  # the common case: nothing to look at
        return value
    return _PAIR.sub(_pair_match, _URL.sub(_url_match, value))
