"""Transports: stdio and HTTP, and the HTTP edge's limits."""
