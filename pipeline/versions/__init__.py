"""Releasing dataset versions: diffs between releases, the changelog, duplicate and leakage control across
sources, licence filters (docs/versions.md)."""
