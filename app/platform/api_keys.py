"""API keys as configured (`API_KEYS`): parsed here, below the API, so the production
guard (app/platform/settings.py) judges the keys the API will really hold, not the text.

``name:key:role1+role2,...``:

- ``name`` identifies the caller in logs and is the approver of the approvals it sends
  (letters, digits, ``.``, ``_``, ``-``; unique);
- ``key`` is the secret the caller sends (at least 8 printable ASCII characters, no ``:``
  or ``,``, spaces only inside; unique);
- roles: ``viewer`` (read: every GET), ``operator`` (start, cancel, update-address),
  ``reviewer`` (approve), ``admin`` (everything).

Blank entries are skipped, so ``,`` or `` , `` parse to no key at all (an open API).
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
_KEY_RE = re.compile(r"^[\x20-\x7e]+$")
_MIN_KEY_LEN = 8


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
    """Parse `name:key:role1+role2,...`; a spec with no entry means no keys (auth off)."""
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
        if len(secret) < _MIN_KEY_LEN or not _KEY_RE.fullmatch(secret):
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
