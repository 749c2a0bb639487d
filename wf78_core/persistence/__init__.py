"""The run journal: accepted runs on disk before they are acknowledged."""
