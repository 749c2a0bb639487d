"""Example applications served by ``wf78 demo`` and the tests."""
