"""The state store on both backends (SQLite and PostgreSQL)."""
