"""The mysql data-source adapter (being written)."""
