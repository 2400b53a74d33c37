"""The MCP surface: the only layer that speaks the SDK's server API."""
