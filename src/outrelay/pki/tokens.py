"""Enrollment tokens: one-shot EdDSA JWTs a new agent trades for a certificate.

Format and checks follow spec identity.md §3 (claims ``ten``, optional
``aid``, ``iss=outrelay-controller``, ``aud=["outrelay-agent"]``, integer
``exp``/``nbf``/``iat``, a 22-char ``jti``; zero leeway on ``exp``), signed
and verified with PyJWT. Two differences from the reference: the signing key
and the used ids live in a :class:`~outrelay.pki.store.TokenStore`, so they
survive a restart, and ``aid`` binds a token to one agent id when set.

Verification is split in two so a caller can refuse a bad CSR without
burning the token: :meth:`TokenVerifier.check` (signature, claims, time) and
:meth:`TokenVerifier.consume` (the one-shot mark). :meth:`TokenVerifier.verify`
does both, like the reference.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from outrelay.identity import IdentityError, parse_uuid, valid_label
from outrelay.identity.errors import InvalidTenant
from outrelay.pki.errors import TokenInvalid, TokenReplay
from outrelay.pki.store import TokenStore

ISSUER = "outrelay-controller"
AUDIENCE = "outrelay-agent"
ALGORITHM = "EdDSA"
#: Token lifetime when the caller gives none (or a non-positive one).
DEFAULT_TOKEN_TTL = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class TokenClaims:
    """The claims of a verified enrollment token."""

    #: Tenant the agent will belong to.
    tenant: str
    #: Unique token id (one-shot).
    jti: str
    #: Expiry, Unix seconds (the token is valid while now < expires).
    expires: int
    #: Not-before, Unix seconds.
    not_before: int
    #: Issue time, Unix seconds.
    issued_at: int
    #: Canonical agent UUID the token is bound to, or None for any agent of the tenant.
    agent_id: str | None = None


@dataclass(frozen=True)
class IssuedToken:
    """A freshly minted token and its claims."""

    #: The compact JWS to hand to the agent.
    token: str
    #: What it says.
    claims: TokenClaims


def _new_jti() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


class TokenIssuer:
    """Mints enrollment tokens with the store's signing key."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    def issue(
        self,
        tenant: str,
        *,
        ttl: dt.timedelta | None = None,
        agent_id: str | None = None,
        now: float | None = None,
    ) -> IssuedToken:
        """Mint a token for ``tenant``, optionally bound to ``agent_id``.

        ``ttl`` None or <= 0 means ten minutes. Times are whole seconds.

        Raises:
            InvalidTenant: ``tenant`` breaks the tenant rule.
            InvalidUUID: ``agent_id`` is not a UUID.
        """
        if not valid_label(tenant):
            raise InvalidTenant(f"identity: invalid tenant {tenant!r}")
        aid = parse_uuid(agent_id) if agent_id else None
        if ttl is None or ttl <= dt.timedelta(0):
            ttl = DEFAULT_TOKEN_TTL
        t = time.time() if now is None else now
        claims = TokenClaims(
            tenant=tenant,
            jti=_new_jti(),
            expires=int(t + ttl.total_seconds()),
            not_before=int(t - 1),
            issued_at=int(t),
            agent_id=aid,
        )
        payload: dict[str, Any] = {"ten": tenant}
        if aid is not None:
            payload["aid"] = aid
        payload |= {
            "iss": ISSUER,
            "aud": [AUDIENCE],
            "exp": claims.expires,
            "nbf": claims.not_before,
            "iat": claims.issued_at,
            "jti": claims.jti,
        }
        token = jwt.encode(
            payload, self._store.signing_key(), algorithm=ALGORITHM, headers={"typ": "JWT"}
        )
        return IssuedToken(token, claims)


class TokenVerifier:
    """Checks enrollment tokens against the store's key and replay set."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    def check(self, token: str) -> TokenClaims:
        """Verify signature, algorithm, issuer, audience, exp/nbf (zero leeway) and claims.

        Does not consume the token.

        Raises:
            TokenInvalid: naming the failed check.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenInvalid(f"pki: enrollment token invalid: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise TokenInvalid(
                f"pki: enrollment token invalid: unexpected jwt signing method: {header.get('alg')}"
            )
        public = self._store.signing_key().public_key()
        try:
            payload = jwt.decode(
                token,
                public,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=0,
                options={"require": ["exp", "iss", "aud"], "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenInvalid(f"pki: enrollment token invalid: {exc}") from None
        jti = payload.get("jti")
        if not isinstance(jti, str) or not jti:
            raise TokenInvalid("pki: enrollment token invalid: missing jti")
        tenant = payload.get("ten")
        if not isinstance(tenant, str) or not valid_label(tenant):
            raise TokenInvalid(f"pki: enrollment token invalid: invalid tenant claim {tenant!r}")
        aid = payload.get("aid")
        if aid is not None:
            try:
                aid = parse_uuid(aid) if isinstance(aid, str) else None
            except IdentityError:
                aid = None
            if aid is None:
                raise TokenInvalid(
                    f"pki: enrollment token invalid: invalid aid claim {payload.get('aid')!r}"
                )

        def seconds(name: str) -> int:
            value = payload.get(name, 0)
            return int(value) if isinstance(value, int | float) else 0

        return TokenClaims(
            tenant=tenant,
            jti=jti,
            expires=seconds("exp"),
            not_before=seconds("nbf"),
            issued_at=seconds("iat"),
            agent_id=aid,
        )

    def consume(self, claims: TokenClaims) -> None:
        """Mark the token used.

        Raises:
            TokenReplay: it was used before (also before a restart).
        """
        if not self._store.consume(claims.jti, claims.expires):
            raise TokenReplay("pki: enrollment token already used")

    def verify(self, token: str) -> TokenClaims:
        """:meth:`check` then :meth:`consume`; the reference's one-call ``Verify``.

        Raises:
            TokenInvalid: see :meth:`check`.
            TokenReplay: the token was already used.
        """
        claims = self.check(token)
        self.consume(claims)
        return claims
