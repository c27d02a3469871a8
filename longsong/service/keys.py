"""API keys: each acts as exactly one user; the token is shown once at creation and stored hashed.

A token is `ls_<key_id>_<secret>`: `key_id` (12 letters and digits, public, the table's primary key) finds
the row in one indexed lookup, and the stored SHA-256 of the whole token is compared in constant time.
SHA-256 rather than bcrypt/argon2: the secret is 32 random bytes (256 bits), so a stolen hash cannot be
brute-forced whatever the hash's speed; slow hashes protect low-entropy passwords, and would spend tens
of milliseconds of every request's 20 ms overhead budget.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import insert, or_, select, update

from longsong.request import InvalidRequest
from longsong.service.db import Database, api_keys, check_id

PREFIX = "ls_"
KEY_ID_LEN = 12
SECRET_BYTES = 32
MAX_NAME = 100
TOKEN_PATTERN = re.compile(rf"^{PREFIX}([A-Za-z0-9]{{{KEY_ID_LEN}}})_([A-Za-z0-9_-]{{43}})$")
LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often (a write per request is not)


class KeyNotFound(LookupError):
    """No key with this id; one line."""


@dataclass
class NewKey:
    key_id: str
    token: str  # shown once; only its hash is kept
    user_id: str
    name: str
    created_at: datetime


@dataclass
class Principal:
    """Who a request acts as."""

    key_id: str
    user_id: str
    name: str


@dataclass
class KeyInfo:
    key_id: str
    user_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: object) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidRequest("name", f"must be at most {MAX_NAME} printable characters, got {name!r}")
    return name


def create_key(db: Database, user_id: str, name: str = "") -> NewKey:
    check_id("user_id", user_id)
    check_name(name)
    alphabet = string.ascii_letters + string.digits
    key_id = "".join(secrets.choice(alphabet) for _ in range(KEY_ID_LEN))
    token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    now = datetime.now(timezone.utc)
    with db.session() as s:
        s.execute(insert(api_keys).values(key_id=key_id, user_id=user_id, name=name, token_hash=token_hash(token),
                                          created_at=now))
    return NewKey(key_id, token, user_id, name, now)


def authenticate(db: Database, token: str) -> Principal | None:
    """The key's principal; None for a malformed, unknown or revoked token (the caller answers 401 alike)."""
    match = TOKEN_PATTERN.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        return None
    key_id = match.group(1)
    with db.session() as s:
        row = s.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
    if row is None or not hmac.compare_digest(row.token_hash, token_hash(token)) or row.revoked_at is not None:
        return None
    now = datetime.now(timezone.utc)
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
        stale = now - LAST_USED_EVERY
        with db.session() as s:  # its own short write; the lookup above took no lock
            s.execute(update(api_keys).where(api_keys.c.key_id == key_id).where(
                or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at <= stale)).values(last_used_at=now))
    return Principal(row.key_id, row.user_id, row.name)


def _info(row) -> KeyInfo:
    return KeyInfo(row.key_id, row.user_id, row.name, row.created_at, row.revoked_at, row.last_used_at)


def list_keys(db: Database, user_id: str | None = None) -> list[KeyInfo]:
    """Oldest first; every user's when `user_id` is None."""
    query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.key_id)
    if user_id is not None:
        query = query.where(api_keys.c.user_id == check_id("user_id", user_id))
    with db.session() as s:
        return [_info(row) for row in s.execute(query)]


def revoke_key(db: Database, key_id: str) -> KeyInfo:
    """Revoke now (a revoked key stays revoked at its first revocation time); KeyNotFound when unknown."""
    with db.session() as s:
        s.execute(update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                  .values(revoked_at=datetime.now(timezone.utc)))
        row = s.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
    if row is None:
        raise KeyNotFound(f"key_id: no API key {key_id!r} (see `longsong keys list`)")
    return _info(row)
