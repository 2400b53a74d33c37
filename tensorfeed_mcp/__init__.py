"""tensorfeed-mcp: an MCP server that lets an AI assistant see and guard a TensorFeed API account."""

__version__ = "0.1.0"
