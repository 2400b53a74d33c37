"""The upstream client: resilience to every fault the service can show, and hostile answers."""
