"""Voices, their clips and conditionals, and library metadata.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "voices",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("encoder", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_voices_id", "voices", ["id"], unique=True)
    op.create_index("ix_voices_name", "voices", ["name"], unique=True)
    op.create_table(
        "clips",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("voice_pk", sa.Integer, sa.ForeignKey("voices.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("file", sa.String(500), nullable=False),
        sa.Column("source_name", sa.String(500), nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("speech_s", sa.Float, nullable=False),
        sa.Column("sample_rate", sa.Integer, nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_clips_voice_pk", "clips", ["voice_pk"])
    op.create_table(
        "conditionals",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("voice_pk", sa.Integer, sa.ForeignKey("voices.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("flavour", sa.String(32), nullable=False),
        sa.Column("file", sa.String(500), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("checkpoint", sa.String(200), nullable=False),
        sa.Column("clip_sha256", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("voice_pk", "flavour"),
    )
    op.create_index("ix_conditionals_voice_pk", "conditionals", ["voice_pk"])
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(500), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_table("conditionals")
    op.drop_table("clips")
    op.drop_table("voices")
