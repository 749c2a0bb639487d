"""The Redis Streams backend and the distributed worker."""
