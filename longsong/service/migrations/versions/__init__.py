"""The service database's schema revisions, oldest first (0001, 0002, ...)."""
