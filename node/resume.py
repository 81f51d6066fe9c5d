"""JSON Resume (jsonresume.org) documents <-> store records under `cv/`. Pure functions, no I/O.

`basics` and `meta` become `cv/basics` and `cv/meta`; each entry of an array section becomes one record with a
readable slug (`cv/work/acme-2021`). `cv/_index` keeps what paths cannot: the order of sections and entries, and
top-level keys that are not path segments (`$schema`), so export gives back the document that was imported.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from protocol.errors import ErrorCode, ProtocolError
from protocol.paths import validate_path

ROOT = "cv/"
INDEX = "cv/_index"
OBJECT_SECTIONS = ("basics", "meta")
ARRAY_SECTIONS = (
    "work", "volunteer", "education", "awards", "certificates", "publications",
    "skills", "languages", "interests", "references", "projects",
)
SECTION_ORDER = ("basics", *ARRAY_SECTIONS, "meta")

# Which fields name an entry, and which date gives it its year, per section.
_SLUG_FIELDS = {
    "work": (("name", "company"), ("startDate",)),
    "volunteer": (("organization",), ("startDate",)),
    "education": (("institution",), ("startDate",)),
    "awards": (("title",), ("date",)),
    "certificates": (("name",), ("date",)),
    "publications": (("name",), ("releaseDate",)),
    "skills": (("name",), ()),
    "languages": (("language",), ()),
    "interests": (("name",), ()),
    "references": (("name",), ()),
    "projects": (("name",), ("startDate",)),
}
_SLUG_MAX = 48
_SEGMENT = re.compile(r"[a-z0-9._-]+")


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, message)


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:_SLUG_MAX].rstrip("-")


def _entry_slug(section: str, entry: dict) -> str:
    name_fields, date_fields = _SLUG_FIELDS.get(section, (("name",), ()))
    name = next((entry[f] for f in name_fields if isinstance(entry.get(f), str) and entry[f].strip()), "")
    parts = [slugify(name)] if name else []
    for f in date_fields:
        date = entry.get(f)
        if isinstance(date, str) and re.match(r"\d{4}", date):
            parts.append(date[:4])
            break
    return "-".join(p for p in parts if p) or "entry"


def _is_section_name(key: str) -> bool:
    return bool(_SEGMENT.fullmatch(key)) and key not in (".", "..") and not key.startswith("_")


def import_resume(doc: Any) -> dict[str, Any]:
    """The records (path -> value) for a JSON Resume document; ProtocolError(MALFORMED) if it is not one."""
    if not isinstance(doc, dict):
        raise _bad(f"a JSON Resume document must be a JSON object, not {_json_type(doc)}")
    records: dict[str, Any] = {}
    index: dict[str, Any] = {"keys": list(doc), "order": {}, "extra": {}}
    for key, value in doc.items():
        if not isinstance(key, str):
            raise _bad("JSON Resume keys must be text")
        if key in OBJECT_SECTIONS:
            if not isinstance(value, dict):
                raise _bad(f"the '{key}' section must be an object, not {_json_type(value)}")
            records[ROOT + key] = value
        elif key in ARRAY_SECTIONS:
            if not isinstance(value, list):
                raise _bad(f"the '{key}' section must be a list, not {_json_type(value)}")
            index["order"][key] = _import_entries(key, value, records)
        elif _is_section_name(key) and isinstance(value, dict):
            records[ROOT + key] = value
        elif _is_section_name(key) and isinstance(value, list) and all(isinstance(e, dict) for e in value):
            index["order"][key] = _import_entries(key, value, records)
        else:
            index["extra"][key] = value
    records[INDEX] = index
    return records


def _import_entries(section: str, entries: list, records: dict) -> list[str]:
    slugs: list[str] = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _bad(f"entry {n + 1} of '{section}' must be an object, not {_json_type(entry)}")
        base = _entry_slug(section, entry)
        slug, k = base, 1
        while slug in slugs:
            k += 1
            slug = f"{base}-{k}"
        slugs.append(slug)
        records[validate_path(f"{ROOT}{section}/{slug}")] = entry
    return slugs


def export_resume(records: dict[str, Any]) -> dict[str, Any]:
    """The JSON Resume document held by `records` (path -> value); paths outside `cv/` are ignored.

    Entries the index does not know (written one by one after an import) follow the indexed ones, by path.
    """
    index = records.get(INDEX)
    if not isinstance(index, dict):
        index = {}
    objects: dict[str, Any] = {}
    entries: dict[str, dict[str, Any]] = {}
    for path, value in records.items():
        if not path.startswith(ROOT) or path == INDEX:
            continue
        parts = path[len(ROOT):].split("/")
        if len(parts) == 1:
            objects[parts[0]] = value
        elif len(parts) == 2:
            entries.setdefault(parts[0], {})[parts[1]] = value
        # deeper paths under cv/ are not part of a resume document

    order = index.get("order") if isinstance(index.get("order"), dict) else {}
    extra = index.get("extra") if isinstance(index.get("extra"), dict) else {}
    sections: dict[str, Any] = dict(objects)
    for section in set(entries) | {s for s, slugs in order.items() if isinstance(slugs, list)}:
        have = entries.get(section, {})
        listed = [s for s in order.get(section, []) if s in have]
        rest = sorted(s for s in have if s not in set(listed))
        sections[section] = [have[s] for s in listed + rest]
    for k, v in extra.items():
        sections.setdefault(k, v)

    keys = [k for k in index.get("keys", []) if isinstance(k, str) and k in sections]
    rank = {s: i for i, s in enumerate(SECTION_ORDER)}
    keys += sorted((k for k in sections if k not in set(keys)), key=lambda k: (rank.get(k, len(rank)), k))
    return {k: sections[k] for k in keys}


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )
