"""Keeping results: the SQLite run store, study bundles for demos, safe paths and provenance."""
