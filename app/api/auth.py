"""API keys and roles for the REST API.

Configuration: the `API_KEYS` setting (a secret) holds a comma-separated list of entries
``name:key:role1+role2``, for example::

    API_KEYS=ops-bot:s3cr3t-ops:operator+viewer,alice:k-alice:reviewer,root:k-root:admin

- ``name`` identifies the caller in logs and is the default reviewer of an approval
  (letters, digits, ``.``, ``_``, ``-``; unique);
- ``key`` is the secret the caller sends (at least 8 printable characters, no ``:`` or
  ``,``; unique);
- roles: ``viewer`` (read: every GET), ``operator`` (start, cancel, update-address),
  ``reviewer`` (approve), ``admin`` (everything).

A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. With no keys
configured the API is open and every caller holds every role (``python -m app.api`` only
allows that on a loopback address). Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    REVIEWER = "reviewer"
    ADMIN = "admin"


class ApiKeyConfigError(ValueError):
    """API_KEYS cannot be parsed. The message never contains a key."""


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MIN_KEY_LEN = 8
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name (or `anonymous` when auth is off) and its roles."""

    name: str
    roles: frozenset[Role]

    def has(self, role: Role) -> bool:
        return Role.ADMIN in self.roles or role in self.roles


@dataclass(frozen=True)
class ApiKey:
    name: str
    # repr=False keeps the secret out of reprs, tracebacks and debug logs.
    secret: bytes = field(repr=False)
    roles: frozenset[Role]

    @property
    def principal(self) -> Principal:
        return Principal(self.name, self.roles)


def parse_api_keys(spec: str) -> list[ApiKey]:
    """Parse `name:key:role1+role2,...`; an empty spec means no keys (auth off)."""
    keys: list[ApiKey] = []
    names: set[str] = set()
    for index, raw in enumerate(spec.split(","), start=1):
        entry = raw.strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise ApiKeyConfigError(f"API_KEYS entry #{index} must look like name:key:role1+role2")
        name, secret, role_spec = (p.strip() for p in parts)
        if not _NAME_RE.fullmatch(name):
            raise ApiKeyConfigError(f"API_KEYS entry #{index}: invalid name")
        if name in names:
            raise ApiKeyConfigError(f"API_KEYS: name {name!r} is used twice")
        if len(secret) < _MIN_KEY_LEN or not secret.isascii() or not secret.isprintable():
            raise ApiKeyConfigError(
                f"API_KEYS entry {name!r}: the key must be at least {_MIN_KEY_LEN} "
                "printable ASCII characters"
            )
        try:
            roles = frozenset(Role(r.strip().lower()) for r in role_spec.split("+"))
        except ValueError:
            allowed = ", ".join(r.value for r in Role)
            raise ApiKeyConfigError(
                f"API_KEYS entry {name!r}: roles must be among {allowed}"
            ) from None
        encoded = secret.encode()
        if any(hmac.compare_digest(encoded, k.secret) for k in keys):
            raise ApiKeyConfigError(f"API_KEYS entry {name!r}: the same key is used twice")
        names.add(name)
        keys.append(ApiKey(name=name, secret=encoded, roles=roles))
    return keys


class Authenticator:
    """Resolves a presented key to a principal."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = list(keys)

    @classmethod
    def from_spec(cls, spec: str) -> Authenticator:
        return cls(parse_api_keys(spec))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal for `presented`, or None when it matches no key.

        With auth off every caller is an anonymous admin.
        """
        if not self._keys:
            return Principal(ANONYMOUS, frozenset({Role.ADMIN}))
        if not presented:
            return None
        candidate = presented.encode("utf-8", "surrogateescape")
        found: ApiKey | None = None
        # Compare against every key so the time taken does not tell which one was close.
        for key in self._keys:
            if hmac.compare_digest(candidate, key.secret):
                found = key
        return found.principal if found else None
