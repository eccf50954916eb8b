"""Capture: the SQL relay installs, the tables it tracks, the tags a transaction gives."""
