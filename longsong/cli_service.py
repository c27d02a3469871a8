"""The CLI's service commands: `serve` (the HTTP API) and `keys` (API keys and per-user quotas)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from longsong.cli_local import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNREACHABLE, CliError, print_json
from longsong.settings import Settings

QUOTA_OPTIONS = {"concurrent": int, "daily_minutes": float, "monthly_minutes": float, "rate_per_s": float,
                 "burst": int}


def add_commands(command) -> None:
    """`command(name, help)` makes a subparser (cli.build_parser's helper)."""
    command("serve", "the HTTP API and listening page on LONGSONG_API_HOST:LONGSONG_API_PORT")
    k = command("keys", "API keys and per-user quotas (in LONGSONG_DATABASE_URL)")
    sub = k.add_subparsers(dest="keys_action", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="a new key for a user: printed once, stored hashed")
    create.add_argument("--user", required=True)
    create.add_argument("--name", default="")
    create.add_argument("--json", action="store_true")
    ls = sub.add_parser("list", help="keys (never their secret part)")
    ls.add_argument("--user")
    ls.add_argument("--json", action="store_true")
    revoke = sub.add_parser("revoke", help="a key stops working at once")
    revoke.add_argument("key_id")
    quota = sub.add_parser("quota", help="show or set a user's quota (unset options keep their value; "
                                         "`default` clears an override)")
    quota.add_argument("--user", required=True)
    for name in QUOTA_OPTIONS:
        quota.add_argument("--" + name.replace("_", "-"), dest=name, metavar="N")


def serve_command(a: argparse.Namespace, settings: Settings) -> int:
    from longsong.service.app import serve

    serve(settings)
    return EXIT_OK


def _number(name: str, raw: str):
    if raw == "default":
        return None
    try:
        return QUOTA_OPTIONS[name](raw)
    except ValueError:
        kind = "an integer" if QUOTA_OPTIONS[name] is int else "a number"
        raise CliError(f"--{name.replace('_', '-')}: must be {kind} or 'default', got {raw!r}") from None


def keys_command(a: argparse.Namespace, settings: Settings) -> int:
    from longsong.service.db import Database, DatabaseError, DatabaseUnavailable

    try:
        db = Database.open(settings.database)
    except DatabaseError as e:
        raise CliError(str(e), EXIT_UNREACHABLE if isinstance(e, DatabaseUnavailable) else EXIT_BAD_INPUT) from None
    try:
        return _keys(a, settings, db)
    finally:
        db.close()


def _keys(a: argparse.Namespace, settings: Settings, db) -> int:
    from longsong.service import keys, quotas
    from longsong.webhooks import key_secret

    if a.keys_action == "create":
        new = keys.create_key(db, a.user, a.name)
        secret = key_secret(settings.webhook_secret, new.key_id)
        if a.json:
            print_json({"key": new.token, "key_id": new.key_id, "user_id": new.user_id, "name": new.name,
                        "webhook_secret": secret})
        else:
            print(f"key for user {new.user_id} (id {new.key_id}; shown once, store it now):\n{new.token}\n"
                  f"webhook signing secret: {secret}")
    elif a.keys_action == "list":
        rows = keys.list_keys(db, a.user)
        if a.json:
            print_json([asdict(r) for r in rows])
        for r in rows if not a.json else []:
            state = f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "active"
            print(f"{r.key_id:14s} {r.user_id:20s} {state:24s} {r.name}")
    elif a.keys_action == "revoke":
        try:
            r = keys.revoke_key(db, a.key_id)
        except keys.KeyNotFound as e:
            raise CliError(str(e)) from None
        print(f"revoked key {r.key_id} of user {r.user_id}")
    else:
        changes = {n: _number(n, getattr(a, n)) for n in QUOTA_OPTIONS if getattr(a, n) is not None}
        default = quotas.defaults(settings)
        quota = quotas.set_quota(db, a.user, default=default, **changes) if changes else \
            quotas.quota_for(db, a.user, default)
        print_json({"user_id": a.user, **asdict(quota)})
    return EXIT_OK
