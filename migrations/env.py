"""Alembic environment: voicedb passes its own connection in ``config.attributes['connection']``."""

from alembic import context

from voicedb.store import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("voicedb runs its migrations itself: open the library with voicedb instead of alembic.")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
