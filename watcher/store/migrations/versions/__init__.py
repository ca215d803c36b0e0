"""Migration scripts, one per schema revision, loaded by Alembic by file name."""
