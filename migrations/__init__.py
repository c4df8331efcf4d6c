"""Alembic migrations of the voicedb SQLite schema, installed as ``voicedb.migrations``."""
