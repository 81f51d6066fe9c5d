"""The printable HTML résumé: a JSON Resume document brought to a known shape (warning about whatever does not fit)
and rendered by a Jinja2 template with autoescaping on, so nothing in a CV can become markup or script."""

from __future__ import annotations

import json
from typing import Any

import jinja2

from consent.certificate import ENTRY_FIELD, verify_entry
from protocol.errors import ProtocolError

# The fields the template shows, per section: which are text, which are lists of text.
SECTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "work": (("name", "position", "location", "url", "startDate", "endDate", "summary", "description"), ("highlights",)),
    "volunteer": (("organization", "position", "url", "startDate", "endDate", "summary"), ("highlights",)),
    "education": (("institution", "url", "area", "studyType", "startDate", "endDate", "score"), ("courses",)),
    "awards": (("title", "date", "awarder", "summary"), ()),
    "certificates": (("name", "date", "issuer", "url"), ()),
    "publications": (("name", "publisher", "releaseDate", "url", "summary"), ()),
    "skills": (("name", "level"), ("keywords",)),
    "languages": (("language", "fluency"), ()),
    "interests": (("name",), ("keywords",)),
    "references": (("name", "reference"), ()),
    "projects": (("name", "startDate", "endDate", "description", "url"), ("highlights",)),
}
BASICS = ("name", "label", "email", "phone", "url", "summary")
LOCATION = ("address", "postalCode", "city", "region", "countryCode")
PROFILE = ("network", "username", "url")

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("cv_agent", "templates"),
    autoescape=True,  # on for every template, whatever its file name
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _safe_url(url: str) -> str:
    """Only web and mail links become links; `javascript:` and the like are shown as text."""
    return url if url.lower().startswith(("https://", "http://", "mailto:")) else ""


_env.filters["safe_url"] = _safe_url


class _Shaper:
    """Brings a document to the shape the template expects, noting each thing it had to drop or convert."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def text(self, value: Any, where: str) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        self.warnings.append(f"{where} is not text; shown as JSON")
        return json.dumps(value, ensure_ascii=False, default=str)

    def texts(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.warnings.append(f"{where} is not a list")
            return [self.text(value, where)]
        return [self.text(v, f"{where}[{i + 1}]") for i, v in enumerate(value)]

    def obj(self, value: Any, where: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.warnings.append(f"{where} is not an object; left out")
            return {}
        return value

    def fields(self, value: dict, text_fields, list_fields, where: str) -> dict:
        out = {f: self.text(value.get(f), f"{where}.{f}") for f in text_fields}
        out.update({f: self.texts(value.get(f), f"{where}.{f}") for f in list_fields})
        return out


def shape_resume(doc: Any, subject: str | None = None) -> tuple[dict, list[str]]:
    """(the document in the template's shape, warnings). Never raises on a strange document."""
    s = _Shaper()
    doc = s.obj(doc, "the document")
    basics_in = s.obj(doc.get("basics"), "basics")
    basics = s.fields(basics_in, BASICS, (), "basics")
    basics["location"] = s.fields(s.obj(basics_in.get("location"), "basics.location"), LOCATION, (), "basics.location")
    profiles = basics_in.get("profiles") or []
    if not isinstance(profiles, list):
        s.warnings.append("basics.profiles is not a list; left out")
        profiles = []
    basics["profiles"] = [s.fields(p, PROFILE, (), f"basics.profiles[{i + 1}]")
                          for i, p in enumerate(profiles) if s.obj(p, f"basics.profiles[{i + 1}]")]
    if not basics["name"]:
        s.warnings.append("basics.name is missing")
    out: dict[str, Any] = {"basics": basics}
    for section, (text_fields, list_fields) in SECTIONS.items():
        entries = doc.get(section) or []
        if not isinstance(entries, list):
            s.warnings.append(f"{section} is not a list; left out")
            entries = []
        shaped = []
        for i, entry in enumerate(entries):
            where = f"{section}[{i + 1}]"
            if not isinstance(entry, dict):
                s.warnings.append(f"{where} is not an object; left out")
                continue
            item = s.fields(entry, text_fields, list_fields, where)
            if section == "certificates" and ENTRY_FIELD in entry:
                item["signed"] = _signature_of(entry, subject)
            shaped.append(item)
        out[section] = shaped
    return out, s.warnings


def _signature_of(entry: dict, subject: str | None) -> dict:
    try:
        cert = verify_entry(entry, subject=subject)
    except ProtocolError as err:
        return {"verified": False, "issuer": "", "why": err.message}
    return {"verified": True, "issuer": cert.iss, "why": ""}


def render_resume(doc: Any, *, subject: str | None = None, fetched_at: str = "") -> tuple[str, list[str]]:
    """(HTML text, warnings) for a JSON Resume document; `subject` is the person's DID, for certificate checks."""
    shaped, warnings = shape_resume(doc, subject)
    html = _env.get_template("resume.html.j2").render(cv=shaped, subject=subject or "", fetched_at=fetched_at)
    return html, warnings
