"""Who may ask what: an ``Authorization: Bearer <key>`` whose sha256 is in ``http.api_keys`` may use the tenants
listed for it; with no keys configured every tenant is open, so the gateway then binds loopback only."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence

from inference.http.errors import ApiError
from streamtune.contracts import TENANT_PATTERN
from streamtune.errors import ConfigError
from streamtune.settings import HttpSettings

__all__ = ["Access", "KeyRing", "authorize", "check_exposure", "hash_key", "is_loopback"]


def hash_key(key: str) -> str:
    """The digest that ``http.api_keys`` stores for ``key`` (keys are never stored in clear)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(http: HttpSettings) -> None:
    """Without keys every tenant is open to any client, so only loopback may be bound; anything else fails."""
    if not http.api_keys and not is_loopback(http.host):
        raise ConfigError(
            "http.host",
            http.host,
            "with no http.api_keys the gateway serves every tenant to anyone who reaches it, so it binds loopback "
            'only: set http.host = "127.0.0.1", or add keys to http.api_keys (the digest of a key: '
            "`streamtune http hash-key KEY`)",
        )


@dataclasses.dataclass(frozen=True)
class Access:
    """The tenants one request may use; ``tenants`` None: every tenant."""

    tenants: frozenset[str] | None

    def allows(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def only_tenant(self) -> str | None:
        return next(iter(self.tenants)) if self.tenants is not None and len(self.tenants) == 1 else None


class KeyRing:
    """``http.api_keys`` (sha256 hex → tenants or ``'*'``) turned into each bearer key's ``Access``."""

    def __init__(self, api_keys: Mapping[str, Sequence[str]]) -> None:
        self._keys: dict[str, Access] = {}
        for digest, tenants in api_keys.items():
            bad = [t for t in tenants if t != "*" and not re.fullmatch(TENANT_PATTERN, t)]
            if bad or not tenants:
                raise ConfigError(
                    f"http.api_keys[{digest[:8]}...]",
                    list(tenants),
                    "list the tenants the key may use (letters, digits, '_' and '-', at most 64 characters) "
                    "or '*' for every tenant",
                )
            self._keys[digest] = Access(None if "*" in tenants else frozenset(tenants))

    @property
    def open(self) -> bool:
        return not self._keys

    def access(self, authorization: str | None) -> Access:
        """The tenants of the key in an ``Authorization`` header; ApiError 401 for a missing or unknown key."""
        if self.open:
            return Access(None)
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(
                401,
                "missing API key: send `Authorization: Bearer <key>`",
                kind="authentication_error",
                code="invalid_api_key",
            )
        # A lookup by digest: an attacker cannot steer the digest, so its timing tells nothing about a key.
        access = self._keys.get(hash_key(key.strip()))
        if access is None:
            raise ApiError(401, "invalid API key", kind="authentication_error", code="invalid_api_key")
        return access


def authorize(access: Access, tenant: str, param: str = "model") -> None:
    if not access.allows(tenant):
        raise ApiError(
            403,
            f"this API key may not use tenant {tenant!r}",
            kind="permission_error",
            code="model_not_permitted",
            param=param,
        )
