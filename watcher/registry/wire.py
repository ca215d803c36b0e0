"""Read what registries send besides a manifest's headers: bodies and paging links.

Pure parsing, no I/O, no httpx, no imports from watcher outside this package. Each
function takes bytes or a header value and says plainly when it cannot read them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from watcher.registry.media_types import DOCKER_SCHEMA1

# One link-value of RFC 8288: <target> followed by ;-separated parameters.
_LINK = re.compile(r"<(?P<target>[^>]*)>(?P<params>[^,<]*)")
_REL = re.compile(
    r"""(?:^|;)\s*rel\s*=\s*(?:"(?P<quoted>[^"]*)"|(?P<bare>[^;\s]+))""", re.I
)


def parse_next_link(header: str) -> str | None:
    """The target of the ``rel="next"`` link in a ``Link`` value, as written.

    The target may be relative (``</v2/a/tags/list?last=x&n=2>``) or absolute; the
    caller resolves it. ``rel`` may hold several relation types (``"next last"``).
    """
    for match in _LINK.finditer(header):
        for rel in _REL.finditer(match["params"]):
            relations = (rel["quoted"] or rel["bare"] or "").lower().split()
            if "next" in relations:
                return match["target"].strip()

    return None


def parse_error_codes(body: bytes) -> tuple[str, ...]:
    """The distribution spec's error codes (``MANIFEST_UNKNOWN``) in an error body.

    Anything else, including a body that is not JSON, gives no codes.
    """
    document = json_object(body)
    errors = document.get("errors") if document is not None else None
    if not isinstance(errors, list):
        return ()

    codes = (error.get("code") for error in errors if isinstance(error, dict))
    return tuple(code for code in codes if isinstance(code, str) and code)


def parse_tags(body: bytes) -> list[str]:
    """The tags in a ``/tags/list`` page; ``"tags": null`` means none.

    Raises:
        ValueError: the page is not ``{"tags": [strings]}``; says what is wrong
            without quoting it.
    """
    document = json_object(body)
    if document is None:
        msg = "the page is not a JSON object"
        raise ValueError(msg)

    tags = document.get("tags")
    if tags is None:
        return []

    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        msg = "the page's 'tags' is not a list of strings"
        raise ValueError(msg)

    return tags


def sniff_media_type(body: bytes) -> str | None:
    """The media type a manifest body declares, for answers without a usable type.

    Schema1 manifests declare none but ``"schemaVersion": 1``.
    """
    document = json_object(body)
    if document is None:
        return None

    media_type = document.get("mediaType")
    if isinstance(media_type, str) and media_type.strip():
        return media_type.strip().lower()

    if document.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1

    return None


def json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` parsed as a JSON object, or None when it is not one."""
    try:
        document = json.loads(body)
    except ValueError:
        return None

    return document if isinstance(document, dict) else None
