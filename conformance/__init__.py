"""Conformance checks that run a peer's own test suite against wf78.

``python -m conformance.starlette`` runs Starlette's suite twice, bare and with every
``TestClient`` app wrapped in ``Wf78Middleware``, and compares the outcomes test by test
(README, "Starlette's suite as a conformance check")."""
