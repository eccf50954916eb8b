"""Matching: webhooks and event rules as loaded from the database, and their conditions."""
