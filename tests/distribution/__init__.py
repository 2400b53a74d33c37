"""Distribution: the packages, the bundle, container files, host configs, dependencies and MCP conformance."""
