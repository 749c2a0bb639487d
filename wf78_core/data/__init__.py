"""Data operations over the engine core: the Base78 table, sharding, the mirrors' outbox relay.

Sits below the engine and never imports it: what it needs of an engine is
:class:`wf78_core.data.ports.EnginePort`. ``table`` (writes) builds on ``reads`` and
``arguments``; ``mirrors`` (the relay) and the table share the outbox format (``outbox``).
"""
