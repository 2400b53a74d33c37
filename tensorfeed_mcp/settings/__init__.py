"""Settings from the environment, and the security policy beside them: URLs, loopback, token identity, redaction."""
