"""The hosted multi-tenant mode: replicas on a shared store, and admission of tenants."""
