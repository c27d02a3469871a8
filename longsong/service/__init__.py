"""The HTTP service: `longsong serve` (API, listening page, metrics) over the Temporal client, with API keys,
quotas and usage in an SQL database."""
