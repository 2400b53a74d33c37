"""What the tests and the benchmark share: the server's settings and environment (env), starting servers (servers),
clients (clients), the record of all output for the token scan (records), the CLI (cli), PostgreSQL (postgres),
pinned npm tools (npm), waiting (waiting) and reading answers (answers)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository's root (the folder with pyproject.toml)."""
