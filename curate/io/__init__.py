"""Shard listing and reading, and score-index files."""
