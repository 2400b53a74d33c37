"""The core: alert rules and kinds, the ledger's arithmetic, the properties every tool answer keeps, the layering."""
