"""The transports: stdio, and HTTP for one user (local_http) or many (hosted_http), over one listener."""
