"""The elasticsearch data-source adapter (being written)."""
