"""Aliases (other names a voice answers to) and the provenance of blended voices.

Clients written for other servers send stock names (``alloy``, ``af_bella``): an alias maps each to a
chosen voice. A blend is a voice interpolated from others; ``voices.blend`` records which, and with what
weights, so ``show`` and exports can say where it came from.

Revision ID: 0006_aliases_and_blends
Revises: 0005_change_log
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_aliases_and_blends"
down_revision = "0005_change_log"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aliases",
        sa.Column("alias", sa.String(200), primary_key=True),
        sa.Column("voice_pk", sa.Integer, sa.ForeignKey("voices.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_aliases_voice_pk", "aliases", ["voice_pk"])
    op.add_column("voices", sa.Column("blend", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("voices") as batch:
        batch.drop_column("blend")
    op.drop_table("aliases")
