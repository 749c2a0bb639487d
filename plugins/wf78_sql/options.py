"""Adapter options given as a struct or a mapping (the core's helper, re-exported)."""

from __future__ import annotations

from wf78_core.plugin import convert_options

__all__ = ["convert_options"]
