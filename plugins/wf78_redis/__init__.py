"""The redis data-source adapter (being written)."""
