"""A change log: which voices each generation changed, so other processes update their index in place.

Every change to voice vectors bumps ``meta.generation`` in its transaction. A process whose FAISS
index is at an older generation used to rebuild it from every voice; with several servers sharing one
database that is a full rebuild on every server for every enrolment. Each bump now also records the
voices it touched (``voice_pk`` NULL: too many to list, rebuild), so a reader applies only those.
Old entries are pruned; a reader that fell further behind than the log reaches rebuilds.

Revision ID: 0005_change_log
Revises: 0004_match_vectors
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_change_log"
down_revision = "0004_match_vectors"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("voice_pk", sa.Integer, nullable=True),
    )
    op.create_index("ix_changes_generation", "changes", ["generation"])


def downgrade() -> None:
    op.drop_table("changes")
