"""The service database on SQLite (a temp file) and on a real PostgreSQL server: migrations, API keys,
quota overrides, atomic admission, minutes accounting, song listing, and the in-memory rate limiter."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from longsong.request import InvalidRequest
from longsong.service import keys, quotas
from longsong.service.db import Database, DatabaseError, DatabaseUnavailable, metadata
from longsong.service.quotas import Admission, OverQuota, Quota, SongTaken
from longsong.service.ratelimit import RateLimiter
from longsong.settings import Settings
from pg_server import PostgresMissing, binaries, free_port, new_database, pg_server

UTC = timezone.utc
TABLES = {"api_keys", "quotas", "songs", "user_locks"}
ROOMY = Quota(concurrent=100, daily_minutes=10_000, monthly_minutes=100_000, rate_per_s=10, burst=40)


@pytest.fixture(scope="session")
def pg_url():
    try:
        binaries()
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with pg_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/data/longsong.db"  # data/ does not exist yet: open creates it
    return new_database(request.getfixturevalue("pg_url"))


@pytest.fixture
def db(db_url):
    database = Database.open(db_url)
    yield database
    database.close()


def tables(db: Database) -> set[str]:
    return set(inspect(db.engine).get_table_names()) - {"alembic_version"}


# ---------------------------------------------------------------------------------------------- migrations


def test_migrations_create_the_schema_and_reopening_is_idempotent(db_url):
    first = Database.open(db_url)
    second = Database.open(db_url)  # upgrade head again: nothing to do, nothing fails
    try:
        assert tables(first) == tables(second) == TABLES
        with second.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0001"]
        second.ping()
    finally:
        first.close()
        second.close()


def test_upgrade_then_downgrade_to_base_and_back(db):
    db.downgrade("base")
    assert tables(db) == set()
    db.upgrade("head")
    assert tables(db) == TABLES


def test_migrations_match_the_tables_the_code_uses(db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_bad_and_unreachable_urls_fail_in_one_line_without_the_password(tmp_path):
    with pytest.raises(DatabaseError, match="LONGSONG_DATABASE_URL.*allowed: sqlite, postgresql"):
        Database.open("mysql://root:hunter2@localhost/x")
    with pytest.raises(DatabaseError, match="LONGSONG_DATABASE_URL.*in-memory"):
        Database.open("sqlite://")
    with pytest.raises(DatabaseUnavailable) as caught:
        Database.open(f"postgresql+psycopg://longsong:hunter2@127.0.0.1:{free_port()}/longsong")
    message = str(caught.value)
    assert message.startswith("LONGSONG_DATABASE_URL") and "\n" not in message and "hunter2" not in message


def test_ping_reports_a_server_that_went_away():
    with pg_server() as url:
        db = Database.open(url)
        db.ping()
    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            db.ping()
        assert "LONGSONG_DATABASE_URL" in str(caught.value) and "\n" not in str(caught.value)
        with pytest.raises(DatabaseUnavailable):
            keys.list_keys(db)
    finally:
        db.close()


# ---------------------------------------------------------------------------------------------- keys


def test_key_create_authenticate_list_revoke(db):
    new = keys.create_key(db, "alice", "laptop")
    other = keys.create_key(db, "bob")
    assert new.token.startswith(f"ls_{new.key_id}_") and new.created_at.tzinfo == UTC

    who = keys.authenticate(db, new.token)
    assert who == keys.Principal(new.key_id, "alice", "laptop")
    assert keys.authenticate(db, new.token[:-1] + ("A" if new.token[-1] != "A" else "B")) is None  # wrong secret
    assert keys.authenticate(db, other.token.replace(other.key_id, new.key_id)) is None  # bob's secret, alice's id
    for junk in ("", "ls_", "Bearer x", new.token + "x", new.token.replace("ls_", "xx_")):
        assert keys.authenticate(db, junk) is None

    listed = keys.list_keys(db, "alice")
    assert [k.key_id for k in listed] == [new.key_id]
    assert listed[0].last_used_at is not None and listed[0].last_used_at.tzinfo == UTC
    assert {k.user_id for k in keys.list_keys(db)} == {"alice", "bob"}

    revoked = keys.revoke_key(db, new.key_id)
    assert revoked.revoked_at is not None and revoked.revoked_at.tzinfo == UTC
    assert keys.authenticate(db, new.token) is None
    assert keys.revoke_key(db, new.key_id).revoked_at == revoked.revoked_at  # revoking again changes nothing
    assert keys.authenticate(db, other.token).user_id == "bob"
    with pytest.raises(keys.KeyNotFound, match="no API key"):
        keys.revoke_key(db, "nosuchkey123")


def test_key_rejects_bad_user_and_name(db):
    with pytest.raises(InvalidRequest, match="user_id"):
        keys.create_key(db, "alice smith")
    with pytest.raises(InvalidRequest, match="name"):
        keys.create_key(db, "alice", "x" * 101)
    with pytest.raises(InvalidRequest, match="name"):
        keys.create_key(db, "alice", "tab\there")


def test_tokens_are_stored_hashed(db, db_url):
    new = keys.create_key(db, "alice")
    secret = new.token[len(f"ls_{new.key_id}_"):]
    digest = hashlib.sha256(new.token.encode()).hexdigest()
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        stored = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))
        assert digest.encode() in stored  # the files read are the ones holding the key
        assert new.token.encode() not in stored and secret.encode() not in stored
    else:
        with db.engine.connect() as conn:
            stored = " ".join(str(v) for row in conn.execute(text("SELECT * FROM api_keys")) for v in row)
        assert digest in stored and new.token not in stored and secret not in stored


# ---------------------------------------------------------------------------------------------- quotas


def test_quota_overrides(db):
    default = quotas.defaults(Settings())
    assert default == Quota(5, 120.0, 1200.0, 10.0, 40)
    assert quotas.quota_for(db, "alice", default) == default
    assert quotas.set_quota(db, "alice", default=default, concurrent=2, daily_minutes=30.5) == Quota(
        2, 30.5, 1200.0, 10.0, 40)
    assert quotas.set_quota(db, "alice", default=default, burst=3, concurrent=None) == Quota(5, 30.5, 1200.0, 10.0, 3)
    assert quotas.quota_for(db, "bob", default) == default
    with pytest.raises(InvalidRequest, match="allowed: concurrent"):
        quotas.set_quota(db, "alice", default=default, songs=3)
    with pytest.raises(InvalidRequest, match="concurrent"):
        quotas.set_quota(db, "alice", default=default, concurrent=1.5)
    with pytest.raises(InvalidRequest, match="rate_per_s"):
        quotas.set_quota(db, "alice", default=default, rate_per_s=0)


def test_fifty_concurrent_admits_against_a_quota_of_five_admit_exactly_five(db):
    quota = Quota(concurrent=5, daily_minutes=10_000, monthly_minutes=100_000, rate_per_s=10, burst=40)
    start = threading.Barrier(50)

    def submit(i: int) -> Admission | OverQuota:
        start.wait()
        try:
            return quotas.admit(db, "alice", f"song-{i}", 60.0, quota, prompt="synthwave")
        except OverQuota as exc:
            return exc

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(submit, range(50)))
    admitted = [r.song_id for r in results if isinstance(r, Admission) and r.new]
    refused = [r for r in results if isinstance(r, OverQuota)]
    assert len(admitted) == 5 and len(refused) == 45
    assert {r.limit for r in refused} == {"concurrent"} and {r.retry_after_s for r in refused} == {10}
    assert refused[0].reason == "concurrent songs: 5 of 5 running (quota 5); retry when one ends"
    assert sorted(quotas.active_songs(db, "alice")) == sorted(admitted)


def test_readmitting_is_idempotent_and_another_users_song_is_taken(db):
    one = Quota(concurrent=1, daily_minutes=10, monthly_minutes=100, rate_per_s=1, burst=1)
    assert quotas.admit(db, "alice", "s1", 300, one, key_id="k1") == Admission("s1", new=True)
    assert quotas.admit(db, "alice", "s1", 300, one) == Admission("s1", new=False)  # at the quota: no checks
    assert quotas.usage(db, "alice") == {"active": 1, "daily_minutes": 5.0, "monthly_minutes": 5.0}  # charged once
    with pytest.raises(SongTaken):
        quotas.admit(db, "bob", "s1", 300, one)
    assert quotas.owner(db, "s1") == "alice" and quotas.owner(db, "nope") is None
    quotas.release(db, "s1")
    assert quotas.owner(db, "s1") is None and quotas.usage(db, "alice")["active"] == 0
    with pytest.raises(InvalidRequest, match="song_id"):
        quotas.admit(db, "alice", "bad id", 300, one)


def test_one_song_id_raced_by_many_users_goes_to_one(db):
    start = threading.Barrier(20)

    def submit(i: int) -> str:
        start.wait()
        try:
            return "new" if quotas.admit(db, f"user{i}", "contested", 60.0, ROOMY).new else "again"
        except SongTaken:
            return "taken"

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(submit, range(20)))
    assert sorted(results) == ["new"] + ["taken"] * 19
    assert quotas.owner(db, "contested") == f"user{results.index('new')}"


def test_daily_and_monthly_minutes_and_their_retry_after(db):
    quota = Quota(concurrent=100, daily_minutes=10, monthly_minutes=25, rate_per_s=1, burst=1)
    night = datetime(2025, 3, 31, 23, 0, tzinfo=UTC)
    quotas.admit(db, "alice", "a", 6 * 60, quota, now=night)
    with pytest.raises(OverQuota) as caught:
        quotas.admit(db, "alice", "b", 5 * 60, quota, now=night)
    assert caught.value.limit == "daily_minutes" and caught.value.retry_after_s == 3600
    assert "6.0 of 10 min used" in caught.value.reason and not caught.value.never_fits
    quotas.admit(db, "alice", "b", 5 * 60, quota, now=night + timedelta(hours=1))  # a new day (and month)

    for day in (10, 11):
        quotas.admit(db, "alice", f"m{day}", 9 * 60, quota, now=datetime(2025, 4, day, 12, tzinfo=UTC))
    april12 = datetime(2025, 4, 12, 12, tzinfo=UTC)
    assert quotas.usage(db, "alice", now=april12) == {"active": 4, "daily_minutes": 0.0, "monthly_minutes": 23.0}
    with pytest.raises(OverQuota) as caught:
        quotas.admit(db, "alice", "m12", 9 * 60, quota, now=april12)
    assert caught.value.limit == "monthly_minutes"
    assert caught.value.retry_after_s == int((datetime(2025, 5, 1, tzinfo=UTC) - april12).total_seconds())

    with pytest.raises(OverQuota) as caught:
        quotas.admit(db, "bob", "long", 11 * 60, quota, now=april12)
    assert caught.value.limit == "daily_minutes" and caught.value.never_fits and "never fit" in caught.value.reason


def test_settling_refunds_songs_that_did_not_complete(db):
    quota = Quota(concurrent=1, daily_minutes=10, monthly_minutes=100, rate_per_s=1, burst=1)
    quotas.admit(db, "alice", "s1", 8 * 60, quota)
    with pytest.raises(OverQuota, match="concurrent"):
        quotas.admit(db, "alice", "s2", 60, quota)
    quotas.settle(db, "s1", "failed")
    quotas.settle(db, "s1", "completed")  # the first settlement stands
    assert quotas.usage(db, "alice") == {"active": 0, "daily_minutes": 0.0, "monthly_minutes": 0.0}
    quotas.admit(db, "alice", "s2", 8 * 60, quota)
    quotas.settle(db, "s2", "completed")
    assert quotas.usage(db, "alice") == {"active": 0, "daily_minutes": 8.0, "monthly_minutes": 8.0}
    with pytest.raises(OverQuota, match="daily minutes"):
        quotas.admit(db, "alice", "s3", 8 * 60, quota)
    assert quotas.active_songs(db, "alice") == []
    with pytest.raises(InvalidRequest, match="status"):
        quotas.settle(db, "s2", "done")


def test_songs_are_listed_newest_first_a_page_at_a_time(db):
    base = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    for i in range(7):
        quotas.admit(db, "alice", f"s{i}", 60, ROOMY, now=base + timedelta(seconds=i // 2), prompt=f"p{i}")
    quotas.admit(db, "bob", "other", 60, ROOMY, now=base)
    pages, cursor = [], None
    while True:
        page, cursor = quotas.songs(db, "alice", 3, cursor)
        pages.append([row.song_id for row in page])
        if cursor is None:
            break
    assert pages == [["s6", "s5", "s4"], ["s3", "s2", "s1"], ["s0"]]  # ties in created_at: by song_id
    first = quotas.songs(db, "alice", 1, None)[0][0]
    assert (first.user_id, first.prompt, first.status, first.duration_s) == ("alice", "p6", "active", 60.0)
    assert first.created_at == base + timedelta(seconds=3) and first.settled_at is None
    for bad in ("garbage!", "Zm9v", ""):
        with pytest.raises(InvalidRequest, match="cursor"):
            quotas.songs(db, "alice", 3, bad)
    with pytest.raises(InvalidRequest, match="limit"):
        quotas.songs(db, "alice", 0, None)


# ---------------------------------------------------------------------------------------------- rate limit


def test_rate_limiter_allows_a_burst_then_refills():
    limiter = RateLimiter()
    assert [limiter.take("alice", 2.0, 3, now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("alice", 2.0, 3, now=100.0) == pytest.approx(0.5)  # one token every 0.5 s
    assert limiter.take("bob", 2.0, 3, now=100.0) == 0.0  # buckets are per user
    assert limiter.take("alice", 2.0, 3, now=100.25) == pytest.approx(0.25)
    assert limiter.take("alice", 2.0, 3, now=100.5) == 0.0
    assert limiter.take("alice", 2.0, 3, now=100.5) == pytest.approx(0.5)
    assert [limiter.take("alice", 2.0, 3, now=200.0) for _ in range(4)][-1] > 0  # refilled to the burst, no more


def test_rate_limiter_memory_is_bounded():
    limiter = RateLimiter(max_buckets=10)
    for i in range(100):
        limiter.take(f"user{i}", 1.0, 5, now=0.0)
    assert len(limiter) == 10
    limiter.take("late", 1.0, 5, now=10.0)  # every other bucket has refilled by now: equal to a fresh one
    assert len(limiter) == 1
