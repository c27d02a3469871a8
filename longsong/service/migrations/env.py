"""Alembic environment: migrates the connection `Database` hands over in `config.attributes["connection"]`
(inside its transaction), so `Database.upgrade`/`downgrade` are the way to run revisions; no alembic.ini."""

from alembic import context

from longsong.service.db import SETTING, DatabaseError, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise DatabaseError(f"{SETTING}: run migrations through longsong.service.db.Database (open, upgrade, "
                        f"downgrade), not the alembic command line")
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
