"""tensorfeed-mcp: an MCP server that lets an AI assistant see and guard a TensorFeed API account."""

# The one place the version is written: pyproject.toml reads it, serverInfo reports it, and server.json and
# manifest.json repeat it (tests/distribution/test_packaging.py holds them equal).
__version__ = "0.1.0"
