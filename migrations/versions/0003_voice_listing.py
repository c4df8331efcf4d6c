"""An index for listing a big library: pk order with the columns ``list`` filters on.

``voicedb list`` pages (``--offset``) and filters (``--name``, ``--tag``) in primary-key order. The
voices table carries every embedding (1 KB a row), so scanning it for a page reads the whole
table; this narrow covering index holds what those scans read, about 30 bytes a voice.
PostgreSQL cannot put a JSON column in a B-tree index, so there it covers the primary key and name only.

Revision ID: 0003_voice_listing
Revises: 0002_voice_language
Create Date: 2026-12-09
"""

from alembic import op

revision = "0003_voice_listing"
down_revision = "0002_voice_language"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_index("ix_voices_listing", "voices", ["pk", "name", "tags"] if sqlite else ["pk", "name"])


def downgrade() -> None:
    op.drop_index("ix_voices_listing", "voices")
