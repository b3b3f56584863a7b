"""What a run remembers and reports per row: the resume ledger (SQLite) and the manifest."""
