"""Capture's Python side: ``relay.tag``. Capture itself runs in PostgreSQL (sql/migrations)."""
