"""XPath extension functions for site profiles, registered with lxml on import.

``json-value(string, key)`` parses its first argument as a JSON object and returns the string
value under ``key``, or the empty string when the text is not a JSON object or the value is
missing or not a string. Search engines keep the full-size URL and title of an image result in
a JSON attribute (Bing Images: ``<a class="iusc" m='{"murl": ..., "t": ...}'>``), so a profile
can set ``image_source: "json-value(@m, 'murl')"`` and ``captions: ["json-value(@m, 't')"]``.
JSON escapes such as ``\\u0026`` and ``\\"`` are decoded, which plain XPath string functions
cannot do.

The function is registered in lxml's global function namespace (no prefix), so every XPath
expression compiled or evaluated after this import can call it.
"""

from __future__ import annotations

import json
from typing import Any

import lxml.etree


def json_value(_context: Any, value: Any, key: Any) -> str:
    """Return the string under ``key`` in the JSON object ``value`` (an XPath string or node-set)."""
    if isinstance(value, list):
        # A node-set such as @m: XPath's string() takes the first node's value.
        value = value[0] if value else ""
    try:
        document = json.loads(str(value))
    except ValueError:
        return ""
    if not isinstance(document, dict):
        return ""
    result = document.get(str(key), "")
    return result if isinstance(result, str) else ""


lxml.etree.FunctionNamespace(None)["json-value"] = json_value
