"""Matching embeddings per speaker encoder, apart from the conditionals' embedding.

``clips.embedding`` and ``voices.embedding`` stay what upstream computes for the conditionals.
Matching uses embeddings of the speech only, by one or more speaker encoders (the Chatterbox voice
encoder, CAM++), kept per clip and per voice so that a library can switch encoders without decoding
audio it already embedded. Existing voices have none until ``voicedb check --repair`` or
``voicedb matcher`` computes them; until then they are matched by their conditionals embedding.

Revision ID: 0004_match_vectors
Revises: 0003_voice_listing
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_match_vectors"
down_revision = "0003_voice_listing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clip_vectors",
        sa.Column("clip_pk", sa.Integer, sa.ForeignKey("clips.pk", ondelete="CASCADE"), primary_key=True),
        sa.Column("encoder", sa.String(32), primary_key=True),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "voice_vectors",
        sa.Column("voice_pk", sa.Integer, sa.ForeignKey("voices.pk", ondelete="CASCADE"), primary_key=True),
        sa.Column("encoder", sa.String(32), primary_key=True),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("voice_vectors")
    op.drop_table("clip_vectors")
