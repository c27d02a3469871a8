"""Alembic's environment and revisions for the service database (`Database.open` runs them; no alembic.ini)."""
