"""koa78's encoded ``pars``: older koa78 clients send them base64-encoded, said by the flags
``jsonbase64`` / ``base64`` and by their version ``v`` (the ``v`` header, else parameter).

Read as koa78's UpInfo read them, in every answer mode:

- ``v`` (default 24) sets the flags' defaults: from 24 on ``json`` is on and ``jsonbase64``
  off; from 17.01 to under 24 ``json`` is off and ``jsonbase64`` on; below, both off but
  ``json``. A ``v`` that is not a number is a 400 naming it.
- ``jsonbase64``: ``pars`` is one base64 text; decoded, from ``v`` 22 on it is the values
  joined by ``,~`` (``a,~b``), below 22 a JSON array; ``null`` is no values.
- ``base64`` (over ``jsonbase64``): ``pars`` is a base64 text (one value) or a list of
  them (one value each).
- otherwise ``pars`` is as always (a JSON array, a list, or JSON text of one).

koa78's base64 alphabet: ``*`` stands for ``+``, ``-`` for ``/``, ``.`` for ``=`` (URL-safe
``_`` is ``/`` too, as Node's decoder reads it, and a space is a ``+`` that a form decoded);
padding may be left out; the bytes must be UTF-8 text. Where koa78 quietly kept garbage or
nothing, wf78 refuses: text that does not decode, values that are not text or JSON, and
flags other than yes/no words (``1``/``0``, ``true``/``false``; koa78 took any non-empty
form text, ``false`` too, as yes) are 400s naming the field. An encoded payload is never
stored.
"""

from __future__ import annotations

import binascii
import math
import re
from typing import Any

from wf78_core.http.routes.answers import bad, kind_of, shown
from wf78_core.http.routes.params import decoded, flag

__all__ = ["decode_pars"]

_DEFAULT_VERSION = 24.0
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# koa78's stand-ins (and Node's URL-safe "_", and a form's "+" decoded as a space).
_ALPHABET = str.maketrans({"*": "+", "-": "/", ".": "=", "_": "/", " ": "+"})
_LINE_BREAKS = str.maketrans("", "", "\r\n\t")
_BASE64 = re.compile(r"([A-Za-z0-9+/]*)(=*)")


def decode_pars(params: dict[str, Any], version_header: str | None) -> None:
    """Replace an encoded ``pars`` in ``params`` by its values (see the module)."""
    version = _version(version_header, params.get("v"))
    base64 = _flag(params, "base64", default=False)
    if version >= 24:
        jsonbase64 = _flag(params, "jsonbase64", default=False)
    elif version >= 17.01:
        jsonbase64 = _flag(params, "jsonbase64", default=True)
    else:
        jsonbase64 = _flag(params, "jsonbase64", default=False)
    _flag(params, "json", default=True)  # checked: JSON text is read as JSON anyway
    pars = params.get("pars")
    if pars is None or pars == "" or not (base64 or jsonbase64):
        return
    if base64:
        params["pars"] = _each_decoded(pars)
    else:
        params["pars"] = _joined(pars, version, explicit=params.get("jsonbase64") is not None)


def _version(header: str | None, param: Any) -> float:
    """koa78's client version: the ``v`` header, else the ``v`` parameter, else 24."""
    value: Any = param if header is None else header
    field = "v" if header is None else "v (header)"
    if value is None:
        return _DEFAULT_VERSION
    number: float | None = None
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
        try:
            number = float(value)
        except OverflowError:  # an int past the floats
            number = math.inf
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)  # digits too many for a float are inf
    if number is None or not math.isfinite(number):
        raise bad(field, f"must be a number (the koa78 client's version), got {shown(value)}")
    return number


def _flag(params: dict[str, Any], name: str, *, default: bool) -> bool:
    if params.get(name) is None:
        return default
    return flag(params, name)


def _each_decoded(pars: Any) -> list[str]:
    """``base64``: one value per base64 text."""
    if isinstance(pars, str):
        return [_text(pars, "pars")]
    if isinstance(pars, list):
        out = []
        for index, item in enumerate(pars):
            if not isinstance(item, str):
                raise bad(f"pars[{index}]", f"base64 = 1 needs base64 text, got {kind_of(item)}")
            out.append(_text(item, f"pars[{index}]"))
        return out
    raise bad("pars", f"base64 = 1 needs base64 text or a list of them, got {kind_of(pars)}")


def _joined(pars: Any, version: float, *, explicit: bool) -> list[Any]:
    """``jsonbase64``: one base64 text of the values (``,~``-joined from ``v`` 22 on, a JSON
    array below)."""
    if not isinstance(pars, str):
        why = "jsonbase64 = 1" if explicit else f"v = {version:g} (jsonbase64 by default)"
        raise bad("pars", f"{why} needs one base64 text, got {kind_of(pars)}")
    text = _text(pars, "pars")
    if text == "null":
        return []
    if version >= 22:
        return text.split(",~")
    values = decoded(text, "pars")
    if not isinstance(values, list):
        raise bad("pars", f"the decoded text must be a JSON array (v < 22), got {kind_of(values)}")
    return values


def _text(value: str, field: str) -> str:
    """koa78's base64 text decoded, or a 400 naming ``field``."""
    text = value.translate(_ALPHABET).translate(_LINE_BREAKS)
    match = _BASE64.fullmatch(text)
    data = match.group(1) if match is not None else ""
    if match is None or len(match.group(2)) > 2 or len(data) % 4 == 1:
        raise bad(field, f"is not base64 text (koa78's alphabet), got {shown(value)}")
    try:
        raw = binascii.a2b_base64(data + "=" * (-len(data) % 4), strict_mode=True)
        return raw.decode("utf-8")
    except binascii.Error:
        raise bad(field, f"is not base64 text (koa78's alphabet), got {shown(value)}") from None
    except UnicodeDecodeError:
        raise bad(field, "base64 of bytes that are not UTF-8 text") from None
