"""Per-user quotas and the song reservations they are enforced on, atomically.

A song is reserved (`admit`) before its workflow starts and settled when it closes. Admissions of one
user are serialised, so N concurrent submits against a concurrency quota of k admit exactly k: SQLite by
BEGIN IMMEDIATE (the database's one write lock), PostgreSQL by SELECT ... FOR UPDATE on the user's row
in `user_locks`. Minutes are charged at admission (the requested duration) and kept only by songs that
complete or are still active; a failed, cancelled, terminated or timed-out song is refunded.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, case, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from longsong.request import ID_PATTERN, InvalidRequest
from longsong.service.db import Database, DatabaseError, check_id, quotas, user_locks
from longsong.service.db import songs as song_table

ACTIVE, COMPLETED = "active", "completed"
CLOSED = ("completed", "failed", "canceled", "terminated", "timed_out")  # Temporal's names, as the API shows them
CHARGED = (ACTIVE, COMPLETED)
CONCURRENT_RETRY_S = 10  # a hint: songs take minutes, so there is no exact time one ends
MAX_PAGE = 1000


@dataclass(frozen=True)
class Quota:
    concurrent: int  # songs active at once
    daily_minutes: float  # minutes of audio admitted per UTC day
    monthly_minutes: float  # ... per UTC month
    rate_per_s: float  # API requests per second (token bucket refill)
    burst: int  # token bucket size


def defaults(settings) -> Quota:
    return Quota(settings.quota_concurrent, settings.quota_daily_minutes, settings.quota_monthly_minutes,
                 settings.rate_per_s, settings.rate_burst)


class OverQuota(Exception):
    """Over a limit: the API answers 429 with Retry-After `retry_after_s` and the one-line `reason`.
    `never_fits`: the request exceeds the whole quota, so waiting does not help until the quota is raised."""

    def __init__(self, limit: str, reason: str, retry_after_s: int, *, never_fits: bool = False):
        super().__init__(reason)
        self.limit, self.reason, self.retry_after_s, self.never_fits = limit, reason, retry_after_s, never_fits


class SongTaken(Exception):
    """The song_id is already reserved by another user."""


@dataclass
class Admission:
    song_id: str
    new: bool  # False: this user had already reserved it (a retried submit); nothing was charged


@dataclass
class SongRow:
    song_id: str
    user_id: str
    key_id: str
    prompt: str
    duration_s: float
    created_at: datetime
    status: str
    settled_at: datetime | None


# ---------------------------------------------------------------------------------------------- quota overrides


def _check_field(name: str, value: object) -> int | float | None:
    if value is None:
        return None
    integer = name in ("concurrent", "burst")
    lo = 1 if name == "burst" else 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)) \
            or not math.isfinite(value) or value < lo or (name == "rate_per_s" and value <= 0):
        kind = "an integer" if integer else "a number"
        bound = f">= {lo}" if name != "rate_per_s" else "> 0"
        raise InvalidRequest(name, f"must be {kind} {bound} (or None: the default), got {value!r}")
    return value


def _insert(session):
    """The dialect's INSERT with ON CONFLICT (SQLite and PostgreSQL spell it alike)."""
    return (postgresql if session.get_bind().dialect.name == "postgresql" else sqlite).insert


def quota_for(db: Database, user_id: str, default: Quota) -> Quota:
    """`default` with the user's overrides (NULL columns keep the default)."""
    with db.session() as s:
        row = s.execute(select(quotas).where(quotas.c.user_id == check_id("user_id", user_id))).first()
    if row is None:
        return default
    return Quota(**{f.name: getattr(default, f.name) if getattr(row, f.name) is None else getattr(row, f.name)
                    for f in fields(Quota)})


def set_quota(db: Database, user_id: str, *, default: Quota, **overrides: int | float | None) -> Quota:
    """Set the named overrides (None clears one); returns the user's quota, `default` filling the rest."""
    check_id("user_id", user_id)
    names = [f.name for f in fields(Quota)]
    for name in overrides:
        if name not in names:
            raise InvalidRequest(name, f"is not a quota (allowed: {', '.join(names)})")
    values = {name: _check_field(name, value) for name, value in overrides.items()}
    values["updated_at"] = datetime.now(timezone.utc)
    with db.session() as s:
        stmt = _insert(s)(quotas).values(user_id=user_id, **values)
        s.execute(stmt.on_conflict_do_update(index_elements=[quotas.c.user_id], set_=values))
    return quota_for(db, user_id, default)


# ---------------------------------------------------------------------------------------------- admission


def _periods(now: datetime) -> tuple[datetime, datetime, datetime, datetime]:
    """(day start, next day, month start, next month), UTC."""
    day = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_month = month.replace(year=month.year + 1, month=1) if month.month == 12 else month.replace(
        month=month.month + 1)
    return day, day + timedelta(days=1), month, next_month


def _until(now: datetime, then: datetime) -> int:
    return max(1, math.ceil((then - now).total_seconds()))


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError(f"now={now.isoformat()} is naive: pass a timezone-aware datetime (UTC)")
    return now.astimezone(timezone.utc)


def _lock_user(s, user_id: str) -> None:
    """Serialise this user's admissions: create the lock row race-free, then lock it until commit. SQLite's
    BEGIN IMMEDIATE already holds the database's one write lock: nothing to add there."""
    if s.get_bind().dialect.name == "sqlite":
        return
    s.execute(_insert(s)(user_locks).values(user_id=user_id).on_conflict_do_nothing(index_elements=["user_id"]))
    s.execute(select(user_locks.c.user_id).where(user_locks.c.user_id == user_id).with_for_update())


def _minutes(s, user_id: str, day: datetime, month: datetime) -> tuple[int, float, float]:
    """(active songs, minutes charged today, minutes charged this month), in one indexed query."""
    c = song_table.c
    charged = and_(c.status.in_(CHARGED), c.created_at >= month)

    def total(when, value):
        return func.coalesce(func.sum(case((when, value), else_=0)), 0)

    row = s.execute(select(
        total(c.status == ACTIVE, 1),
        total(and_(charged, c.created_at >= day), c.duration_s),
        total(charged, c.duration_s),
    ).where(c.user_id == user_id, or_(c.status == ACTIVE, c.created_at >= month))).one()
    return int(row[0]), float(row[1]) / 60, float(row[2]) / 60


def admit(db: Database, user_id: str, song_id: str, duration_s: float, quota: Quota, *, key_id: str = "",
          prompt: str = "", now: datetime | None = None) -> Admission:
    """Reserve `song_id` for `user_id` if the quota allows (OverQuota otherwise), atomically per user."""
    check_id("user_id", user_id)
    check_id("song_id", song_id)
    if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not 0 < duration_s < math.inf:
        raise InvalidRequest("duration_s", f"must be a positive number of seconds, got {duration_s!r}")
    now = _now(now)
    day, next_day, month, next_month = _periods(now)
    minutes = duration_s / 60
    taken = SongTaken(f"song_id: {song_id} is taken by another user; choose another id")
    try:
        with db.session(lock=True) as s:
            _lock_user(s, user_id)
            holder = s.execute(select(song_table.c.user_id).where(song_table.c.song_id == song_id)).scalar()
            if holder is not None:
                if holder != user_id:
                    raise taken
                return Admission(song_id, new=False)
            _check(quota, minutes, *_minutes(s, user_id, day, month), now, next_day, next_month)
            s.execute(insert(song_table).values(song_id=song_id, user_id=user_id, key_id=key_id, prompt=prompt,
                                                duration_s=float(duration_s), created_at=now, status=ACTIVE))
    except DatabaseError as exc:
        if isinstance(exc.__cause__, IntegrityError):  # another user's admission (another lock) inserted it first
            raise taken from None
        raise
    return Admission(song_id, new=True)


def _check(quota: Quota, minutes: float, active: int, today: float, this_month: float, now: datetime,
           next_day: datetime, next_month: datetime) -> None:
    """Raise OverQuota for the first limit this song would break; the ones waiting cannot fix come first."""
    eps = 1e-9  # minutes are sums of floats
    if quota.concurrent < 1:
        raise OverQuota("concurrent", "concurrent songs: the quota is 0; no song can run until it is raised",
                        CONCURRENT_RETRY_S, never_fits=True)
    for limit, cap, reset in (("daily_minutes", quota.daily_minutes, next_day),
                              ("monthly_minutes", quota.monthly_minutes, next_month)):
        if minutes > cap + eps:
            raise OverQuota(limit, f"{limit.replace('_', ' ')}: this song's {minutes:.1f} min can never fit the "
                                   f"quota of {cap:g} min", _until(now, reset), never_fits=True)
    if active >= quota.concurrent:
        raise OverQuota("concurrent", f"concurrent songs: {active} of {quota.concurrent} running (quota "
                                      f"{quota.concurrent}); retry when one ends", CONCURRENT_RETRY_S)
    for limit, used, cap, reset, period in (("daily_minutes", today, quota.daily_minutes, next_day, "UTC day"),
                                            ("monthly_minutes", this_month, quota.monthly_minutes, next_month,
                                             "UTC month")):
        if used + minutes > cap + eps:
            raise OverQuota(limit, f"{limit.replace('_', ' ')}: {used:.1f} of {cap:g} min used, this song needs "
                                   f"{minutes:.1f}; retry after the {period} ends ({reset:%Y-%m-%d %H:%M} UTC)",
                            _until(now, reset))


def release(db: Database, song_id: str) -> None:
    """The submit failed after admission: forget the reservation (nothing is charged)."""
    with db.session() as s:
        s.execute(delete(song_table).where(song_table.c.song_id == song_id, song_table.c.status == ACTIVE))


def settle(db: Database, song_id: str, status: str, *, now: datetime | None = None) -> None:
    """The song closed with `status`; only `completed` keeps its minutes. The first settlement stands."""
    if status not in CLOSED:
        raise InvalidRequest("status", f"must be one of {', '.join(CLOSED)}, got {status!r}")
    with db.session() as s:
        s.execute(update(song_table).where(song_table.c.song_id == song_id, song_table.c.status == ACTIVE)
                  .values(status=status, settled_at=_now(now)))


def active_songs(db: Database, user_id: str) -> list[str]:
    """Reservations still active, oldest first (the API reconciles them with Temporal)."""
    with db.session() as s:
        c = song_table.c
        return list(s.execute(select(c.song_id).where(c.user_id == user_id, c.status == ACTIVE)
                              .order_by(c.created_at, c.song_id)).scalars())


def owner(db: Database, song_id: str) -> str | None:
    with db.session() as s:
        return s.execute(select(song_table.c.user_id).where(song_table.c.song_id == song_id)).scalar()


def song(db: Database, song_id: str) -> SongRow | None:
    """The reservation of `song_id` (the API tells a submit in flight from one that died by its age)."""
    with db.session() as s:
        row = s.execute(select(song_table).where(song_table.c.song_id == song_id)).first()
    return SongRow(*row) if row is not None else None


# ---------------------------------------------------------------------------------------------- listing


def _cursor(row: SongRow) -> str:
    raw = f"{row.created_at.isoformat()}|{row.song_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        stamp, song_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
        created = datetime.fromisoformat(stamp)
        if created.tzinfo is None or not ID_PATTERN.fullmatch(song_id):
            raise ValueError(cursor)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("cursor", "is not a cursor this API returned (pass next_cursor as it came)") from None
    return created, song_id


def songs(db: Database, user_id: str, limit: int, cursor: str | None) -> tuple[list[SongRow], str | None]:
    """Newest first, `limit` at a time (1..1000); the cursor for the next page, None on the last."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest("limit", f"must be an integer from 1 to {MAX_PAGE}, got {limit!r}")
    query = select(song_table).where(song_table.c.user_id == user_id)
    if cursor is not None:
        created, song_id = _read_cursor(cursor)
        query = query.where(or_(song_table.c.created_at < created,
                                and_(song_table.c.created_at == created, song_table.c.song_id < song_id)))
    query = query.order_by(song_table.c.created_at.desc(), song_table.c.song_id.desc()).limit(limit + 1)
    with db.session() as s:
        rows = [SongRow(*row) for row in s.execute(query)]
    return rows[:limit], _cursor(rows[limit - 1]) if len(rows) > limit else None


def usage(db: Database, user_id: str, now: datetime | None = None) -> dict:
    """{"active": songs running, "daily_minutes": charged this UTC day, "monthly_minutes": ... this month}."""
    day, _, month, _ = _periods(_now(now))
    with db.session() as s:
        active, today, this_month = _minutes(s, user_id, day, month)
    return {"active": active, "daily_minutes": today, "monthly_minutes": this_month}
