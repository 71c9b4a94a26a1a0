"""API keys and roles for the REST API.

Configuration: the `API_KEYS` setting (a secret) holds a comma-separated list of entries
``name:key:role1+role2``, for example::

    API_KEYS=ops-bot:s3cr3t-ops:operator+viewer,alice:k-alice:reviewer,root:k-root:admin

The format and its parser: app/platform/api_keys.py (the production guard judges the
parsed keys too). A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
With no keys configured the API is open and every caller holds every role, as the
principal ``anonymous`` (``python -m app.api`` only allows that on a loopback address).
Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac

from app.platform.api_keys import ApiKey, ApiKeyConfigError, Principal, Role, parse_api_keys

__all__ = [
    "ANONYMOUS",
    "ApiKey",
    "ApiKeyConfigError",
    "Authenticator",
    "Principal",
    "Role",
    "parse_api_keys",
]

ANONYMOUS = "anonymous"


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
