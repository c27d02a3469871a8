"""API keys, per-user quota overrides, song reservations and the per-user admission lock rows.

Revision ID: 0001
Revises:
Create Date: 2025-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)  # timestamptz on PostgreSQL; naive UTC text on SQLite


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("revoked_at", UTC_TIME),
        sa.Column("last_used_at", UTC_TIME),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_table(
        "quotas",
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("concurrent", sa.Integer),
        sa.Column("daily_minutes", sa.Float),
        sa.Column("monthly_minutes", sa.Float),
        sa.Column("rate_per_s", sa.Float),
        sa.Column("burst", sa.Integer),
        sa.Column("updated_at", UTC_TIME, nullable=False),
    )
    op.create_table(
        "songs",
        sa.Column("song_id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("settled_at", UTC_TIME),
    )
    op.create_index("ix_songs_user_created", "songs", ["user_id", "created_at", "song_id"])
    op.create_index("ix_songs_user_status", "songs", ["user_id", "status"])
    op.create_table("user_locks", sa.Column("user_id", sa.String(64), primary_key=True))


def downgrade() -> None:
    op.drop_table("user_locks")
    op.drop_index("ix_songs_user_status", table_name="songs")
    op.drop_index("ix_songs_user_created", table_name="songs")
    op.drop_table("songs")
    op.drop_table("quotas")
    op.drop_index("ix_api_keys_user_id", table_name="api_keys")
    op.drop_table("api_keys")
