"""Temporal activities: thin adapters from payloads to the longsong core (they do, workflows decide)."""
