"""De-identification: DICOM PS3.15 Basic Application Level Confidentiality Profile.

The action for every element comes from Table E.1-1 of the edition chosen in params
(``anonymise.table_edition``), read from the maintained, versioned copy that the PyPI
package dicom-anonymizer ships; the supported options (longitudinal modified dates,
patient characteristics, device identity, institution identity, UIDs, clean descriptors,
safe private tags) change that table as ``radflow.anonymise_profile`` describes. Codes as
applied here:

====  ==========================================================================
code  meaning here
====  ==========================================================================
D     replace with a dummy value; PatientName and PatientID get the pseudonym
Z     replace with an empty value (sequence: no items)
X     remove the element (sequence: with all its items)
K     keep (a kept sequence is still walked: its items get the same rules)
C     DA/DT values move back by the patient's keyed offset in whole days (retain
      longitudinal temporal information, modified dates); a value that cannot be
      parsed is emptied instead (audited as Z). Descriptors cleaned by the clean
      descriptors option are audited as C too.
U     replace each UID by ``2.25.<int>`` from HMAC-SHA256(key, uid): the same UID
      gives the same new UID in every file and run with the same key; UIDs under
      the DICOM root 1.2.840.10008 (well-known, not instance-specific) are kept
====  ==========================================================================

How an element's action is found, at every sequence depth:

1. private tags (odd groups): X, unless (group, creator, element) is in
   ``anonymise.safe_private_tags`` (then kept, with its creator)
2. curves (50xx,xxxx), overlays (60xx,xxxx) and group lengths (gggg,0000): X
3. Table E.1-1 with the options applied
4. by VR, for elements the table does not name: UI -> U (class and transfer syntax UIDs
   -> K), PN -> Z, DA/DT -> C (X without the longitudinal option), free text LT/ST/UT
   and UN (unknown content) -> X, sequences -> walked
5. anything else: K

Afterwards PatientIdentityRemoved = YES, DeidentificationMethod names the table edition,
DeidentificationMethodCodeSequence lists the CID 7050 codes of exactly what was applied,
LongitudinalTemporalInformationModified = MODIFIED (or REMOVED without the option), the
file meta MediaStorageSOPInstanceUID = the new SOPInstanceUID, the application entity
titles, presentation addresses and private information of the file meta are removed and
the 128-byte preamble is zeroed (it can hold a TIFF header with its own metadata).

Pixel data pass through byte for byte unless a blackout rule cleans them
(``radflow.anonymise_pixels``); images that may carry burned-in text and match no rule
are quarantined. Non-DICOM files (PNG, JPEG, NIfTI) of the pipeline are copied byte for
byte, so text chunks, EXIF or NIfTI descrip/extensions are not scrubbed.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
from pydicom import config
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    MediaStorageDirectoryStorage,
)

from radflow.core import folders, imaging
from radflow.core import manifest as mf
from radflow.core import params as params_mod
from radflow.core.fileio import atomic_write, atomic_write_text
from radflow.data.anonymise_pixels import (
    BlackoutRule,
    black_out,
    burned_in_reason,
    matching_rule,
    rules_from_params,
)
from radflow.data.anonymise_profile import (
    DESCRIPTORS,
    OPTION_NAMES,
    Options,
    Profile,
    build_profile,
    tags_for,
)

log = logging.getLogger(__name__)

__all__ = ["burned_in_reason", "Options", "Settings", "settings_from"]

STAGE = "anonymise"
MIN_KEY_BYTES = 16
# Public on purpose: anyone can recompute demo pseudonyms. Never use it for real data.
DEMO_KEY = b"radflow-PUBLIC-demo-key:not-secret:never-use-for-real-data"
DICOM_ROOT = "1.2.840.10008."
DATE_SHIFT_DAYS = (366, 3652)  # dates move back by 1 to 10 years, per patient
AUDIT_COLUMNS = ["image_id", "tag", "keyword", "action", "path"]
TREE_AUDIT_COLUMNS = ["file", "tag", "keyword", "action", "path"]

# File meta elements that name sending/receiving systems or carry private data.
_META_REMOVE = (
    "SourceApplicationEntityTitle",
    "SendingApplicationEntityTitle",
    "ReceivingApplicationEntityTitle",
    "SourcePresentationAddress",
    "SendingPresentationAddress",
    "ReceivingPresentationAddress",
    "PrivateInformationCreatorUID",
    "PrivateInformation",
)

_DUMMY_BY_VR: dict[str, object] = {
    "PN": "ANONYMOUS",
    "LO": "ANONYMISED",
    "SH": "ANONYMISED",
    "LT": "ANONYMISED",
    "ST": "ANONYMISED",
    "UT": "ANONYMISED",
    "UC": "ANONYMISED",
    "CS": "ANONYMISED",
    "AE": "ANONYMISED",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "IS": "0",
    "DS": "0",
    "AS": "000D",
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
}
_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC", "AE", "DA", "DT"})


def _method_text(options: Options) -> str:
    return f"DICOM PS3.15 E.1-1 {options.edition} basic profile (radflow)"


class AnonymiseError(ValueError):
    """A dataset cannot be de-identified as asked (the message names what is missing)."""


class KeyConfigError(ValueError):
    """No usable pseudonymisation key; the message names the variable or file to set."""


class _Quarantine(Exception):
    """Internal: this input goes to the quarantine table with the message as reason."""


@dataclass
class Settings:
    """Options and blackout rules, with the tag -> action lookup compiled once."""

    options: Options = field(default_factory=Options)
    blackout: tuple[BlackoutRule, ...] = ()
    profile: Profile = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.profile = build_profile(self.options)
        self.element_actions: dict[int, str] = {}

    def element_action(self, tag: int, vr: str | None) -> str:
        """Action for a public element: curves, overlays, group lengths X; else the profile."""
        if (tag >> 16 & 0xFF00) in (0x5000, 0x6000) or not tag & 0xFFFF:
            action = "X"
        else:
            action = self.profile.action(tag, vr)
        self.element_actions[tag] = action
        return action

    def method_items(self, pixels_cleaned: bool) -> list[Dataset]:
        """DeidentificationMethodCodeSequence items, built once per settings."""
        cache = self.__dict__.setdefault("_method_items", {})
        if pixels_cleaned not in cache:
            items = []
            for code, meaning in self.options.method_codes(pixels_cleaned):
                item = Dataset()
                item.CodeValue = code
                item.CodingSchemeDesignator = "DCM"
                item.CodeMeaning = meaning
                items.append(item)
            cache[pixels_cleaned] = items
        return cache[pixels_cleaned]

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> Settings:
        """From params["anonymise"] with the schema's defaults filled (params.with_defaults)."""
        return cls(Options.from_params(params), rules_from_params(params["blackout"]))  # type: ignore[arg-type]


def default_params() -> dict[str, Any]:
    """params["anonymise"] as the schema's defaults make it, for runs without params.yaml."""
    return params_mod.with_defaults({"anonymise": {}})["anonymise"]


@lru_cache(maxsize=4)
def default_settings() -> Settings:
    return Settings.from_params(default_params())


# Command-line flags that may override params["anonymise"].
OVERRIDABLE = (*OPTION_NAMES, "key_file")


def settings_from(
    params: Mapping[str, Any] | None, overrides: Mapping[str, object], environ: Mapping[str, str]
) -> tuple[Settings, bytes, str]:
    """(settings, key, where the key came from) for one anonymise run.

    params: validated params (None: run outside a project, schema defaults, data.source
    folder); overrides: command-line values by params name, None where a flag was not
    given, which win over params["anonymise"]. The key origin text never holds the key.
    """
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"anonymise: no such setting to override: {unknown}")
    section = dict(params["anonymise"]) if params is not None else default_params()
    section.update({name: value for name, value in overrides.items() if value is not None})
    data_source = str(params["data"]["source"]) if params is not None else "folder"
    key, origin = load_key(section, data_source, environ)
    return Settings.from_params(section), key, origin


@dataclass(frozen=True)
class AuditEntry:
    """One action on one element; deliberately holds no value, old or new."""

    tag: str
    keyword: str
    action: str
    path: str


@dataclass(frozen=True)
class TreeSummary:
    files_seen: int
    written: int
    quarantined: int
    audit_path: Path
    quarantine_path: Path
    hidden: int = 0  # dot files and folders, passed over


@dataclass
class _Context:
    key: bytes
    pseudonym: str
    shift_days: int
    settings: Settings
    entries: list[AuditEntry] = field(default_factory=list)
    phi_words: re.Pattern[str] | None = None
    # raw values may be read directly (as pydicom would convert them) unless pydicom is
    # set to raise on invalid values or to convert dates: then every value is parsed
    raw_values: bool = field(
        default_factory=lambda: (
            config.settings.reading_validation_mode != config.RAISE
            and not config.datetime_conversion
        )
    )
    # values made here (pseudonyms, dummies, UIDs, dates) are valid: checking them only
    # matters when pydicom is set to raise on invalid values
    new_value_validation: int | None = field(
        default_factory=lambda: (
            None if config.settings.writing_validation_mode == config.RAISE else config.IGNORE
        )
    )

    def record(self, tag: int, action: str, path: str) -> None:
        self.entries.append(_audit_entry(tag, action, path))


@lru_cache(maxsize=1 << 14)
def _audit_entry(tag: int, action: str, path: str) -> AuditEntry:
    """Entries are immutable and hold no value, so equal ones are shared."""
    return AuditEntry(_tag_text(tag), _keyword(tag), action, path)


# ---------------------------------------------------------------------------------------
# Keys, pseudonyms, UIDs, date shifts


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def pseudonym(key: bytes, patient_id: str, issuer: str = "") -> str:
    """Keyed, stable patient pseudonym; surrounding whitespace (DICOM padding) is ignored."""
    digest = _hmac(key, f"{issuer.strip()}\x00{patient_id.strip()}")
    return "RF-" + digest.hex()[:16]


@lru_cache(maxsize=1 << 16)
def remap_uid(key: bytes, uid: str) -> str:
    """Keyed, stable replacement UID: the HMAC as a version-4 UUID under the 2.25 root."""
    digest = _hmac(key, uid.strip().rstrip("\x00"))
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


def remap_key(key: bytes, value: str) -> str:
    """Manifest study/series keys: UIDs or not, the same keyed stand-in; empty stays empty."""
    value = str(value).strip()
    return remap_uid(key, value) if value else ""


def date_shift_days(key: bytes, patient_pseudonym: str) -> int:
    """Days this patient's dates move back; keyed, so intervals within a patient survive."""
    low, high = DATE_SHIFT_DAYS
    digest = _hmac(key, f"radflow-date-shift\x00{patient_pseudonym}")
    return low + int.from_bytes(digest[:8], "big") % (high - low + 1)


def load_key(
    anonymise_params: Mapping[str, object], data_source: str, environ: Mapping[str, str]
) -> tuple[bytes, str]:
    """Return (key, where it came from). The origin text never contains the key."""
    env_name = str(anonymise_params["key_env"])
    key_file = anonymise_params["key_file"]
    if environ.get(env_name):
        key, origin = environ[env_name].encode("utf-8"), f"environment variable {env_name}"
    elif key_file:
        key, origin = _read_key_file(Path(str(key_file)).expanduser()), f"key file {key_file}"
    elif data_source == "demo":
        return DEMO_KEY, (
            "the public radflow DEMO key (data.source is demo); it is published in the "
            "source code and must never be used for real data"
        )
    else:
        raise KeyConfigError(
            f"no pseudonymisation key for data.source {data_source!r}: set the environment "
            f"variable {env_name} or anonymise.key_file in params.yaml (a file outside any "
            f"repository); the public demo key is only used when data.source is demo"
        )
    if key == DEMO_KEY and data_source != "demo":
        raise KeyConfigError(
            f"the key from {origin} is the public demo key; it is refused for data.source "
            f"{data_source!r}: set {env_name} or anonymise.key_file to a secret key"
        )
    if len(key) < MIN_KEY_BYTES:
        raise KeyConfigError(
            f"the key from {origin} is too short ({len(key)} bytes; at least "
            f"{MIN_KEY_BYTES} needed): a short key lets anyone recompute the pseudonyms"
        )
    return key, origin


def _read_key_file(path: Path) -> bytes:
    if not path.is_file():
        raise KeyConfigError(f"anonymise.key_file {path} does not exist or is not a file")
    repo = _enclosing_git_repo(path)
    if repo is not None:
        raise KeyConfigError(
            f"anonymise.key_file {path} is inside the git repository {repo}; keep the key "
            "outside any repository so it cannot be committed"
        )
    key = path.read_bytes().strip()
    if not key:
        raise KeyConfigError(f"anonymise.key_file {path} is empty")
    return key


def _enclosing_git_repo(path: Path) -> Path | None:
    for parent in path.resolve().parents:
        if (parent / ".git").exists():
            return parent
    return None


# ---------------------------------------------------------------------------------------
# Per-dataset de-identification (no file I/O)


def anonymise_dataset(
    ds: Dataset,
    key: bytes,
    *,
    patient_pseudonym: str | None = None,
    settings: Settings | None = None,
    pixels_cleaned: bool = False,
) -> list[AuditEntry]:
    """De-identify ds in place and return what was done (never any value).

    patient_pseudonym: give it when the caller already knows the patient (the manifest's
    patient_key); otherwise it is pseudonym(key, PatientID, IssuerOfPatientID).
    """
    settings = settings or default_settings()
    if patient_pseudonym is None:
        patient_pseudonym = _pseudonym_from_header(ds, key)
    ctx = _Context(key, patient_pseudonym, date_shift_days(key, patient_pseudonym), settings)
    if settings.options.clean_descriptors:
        ctx.phi_words = _phi_words(ds, settings.profile)
    _walk(ds, ctx, "")
    _stamp(ds, ctx, pixels_cleaned)
    _clean_file_meta(ds, ctx)
    ds.preamble = b"\x00" * 128
    return ctx.entries


def _pseudonym_from_header(ds: Dataset, key: bytes) -> str:
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        raise AnonymiseError("no PatientID in the header: cannot assign a stable pseudonym")
    return pseudonym(key, patient_id, str(ds.get("IssuerOfPatientID", "") or ""))


def _walk(ds: Dataset, ctx: _Context, path: str) -> None:
    settings = ctx.settings
    action_of = settings.element_action
    actions = settings.element_actions  # filled by element_action, read here first
    safe = _safe_private(ds, ctx) if settings.options.safe_private_tags else frozenset()
    raw_ok = ctx.raw_values
    # ds._dict: the elements as read; a kept element is never parsed (written back raw).
    # Lookups use t = int(tag): with a BaseTag key every hit would call BaseTag.__eq__.
    for tag, elem in list(ds._dict.items()):
        t = int(tag)
        if t & 0x10000:  # private (odd group)
            if t in safe:
                continue
            action = "X"
        else:
            action = actions.get(t) or action_of(t, elem.VR)
        if action == "K":
            continue
        if action == "X":
            ctx.record(t, "X", path)
            del ds[tag]
            continue
        vr = _plain_vr(t, elem.VR) if raw_ok and elem.is_raw and action != "T" else None
        if vr is not None:  # a text VR: the new value is made without parsing the old one
            ctx.record(t, _apply_raw(ds, t, elem, vr, action, ctx), path)
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            if action == "Z":
                elem.value = Sequence()
                ctx.record(t, "Z", path)
            else:  # R (and D/U/C/T on a sequence): walk the items
                for i, item in enumerate(elem.value):
                    _walk(item, ctx, _item_path(path, elem, i))
            continue
        applied = _apply(elem, action, ctx)
        ctx.record(t, applied, path)


# VRs whose value is text in the default repertoire or a character string: an element of
# one of these is replaced by a new element (same tag and VR) without decoding the old value
_PLAIN_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
     "UR", "UT"}
)  # fmt: skip


@lru_cache(maxsize=8192)
def _plain_vr(tag: int, vr: str | None) -> str | None:
    """The VR pydicom would give this raw element, when it is in _PLAIN_VRS; else None."""
    if vr is None:  # implicit VR: pydicom looks the public tag up in the dictionary
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return None
    return vr if vr in _PLAIN_VRS else None  # "UN" may be replaced: parsed the usual way


def _raw_strings(raw: RawDataElement) -> str | list[str]:
    """A raw UI/DA/DT value as pydicom's string conversion gives it (default charset)."""
    if not raw.value:
        return ""
    items = raw.value.decode(default_encoding).rstrip(" \x00").split("\\")
    return items[0].strip() if len(items) == 1 else [v.strip() for v in items]


def _apply_raw(
    ds: Dataset, tag: int, raw: RawDataElement, vr: str, action: str, ctx: _Context
) -> str:
    """_apply for a raw element of a plain VR: a new element replaces it (same result)."""
    applied = action
    if action == "D":
        if tag in _PSEUDONYM_TAGS:
            value: object = ctx.pseudonym
        elif vr == "UI":
            value = _map_values(_raw_strings(raw), lambda v: _remap_if_instance(ctx.key, v))
        else:
            value = _DUMMY_BY_VR.get(vr, empty_value_for_VR(vr))
    elif action == "U" and vr == "UI":
        value = _map_values(_raw_strings(raw), lambda v: _remap_if_instance(ctx.key, v))
    elif action == "C" and vr in ("DA", "DT"):
        value = _map_values(_raw_strings(raw), lambda v: _shift(v, vr, ctx.shift_days))
        if value is None:
            value, applied = empty_value_for_VR(vr), "Z"
    else:  # Z, or an action that does not fit this element's VR
        value, applied = empty_value_for_VR(vr), "Z"
    ds[tag] = DataElement(tag, vr, value, validation_mode=ctx.new_value_validation)
    return applied


def _safe_private(ds: Dataset, ctx: _Context) -> frozenset[int]:
    """Private tags of this dataset on the allow-list, with the creators they need."""
    allowed = {(s.group, s.creator, s.element) for s in ctx.settings.options.safe_private_tags}
    keep: set[int] = set()
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset parses every element)
        group, element = tag >> 16, tag & 0xFFFF
        if not group & 1 or element < 0x1000:
            continue
        creator_tag = (group << 16) | (element >> 8)
        if creator_tag not in ds:
            continue
        creator = str(ds[creator_tag].value or "").strip()
        if (group, creator, element & 0xFF) in allowed:
            keep.update((tag, creator_tag))
    return frozenset(keep)


def _apply(elem: DataElement, action: str, ctx: _Context) -> str:
    """Carry out one action; returns the action actually applied (C may fall back to Z)."""
    vr = elem.VR
    if action == "D":
        elem.value = _dummy(elem, ctx)
    elif action == "U" and vr == "UI":
        elem.value = _map_values(elem.value, lambda v: _remap_if_instance(ctx.key, v))
    elif action == "C" and vr in ("DA", "DT"):
        shifted = _map_values(elem.value, lambda v: _shift(v, vr, ctx.shift_days))
        if shifted is None:
            elem.value = empty_value_for_VR(vr)
            return "Z"
        elem.value = shifted
    elif action == "T" and vr in _TEXT_VRS:
        cleaned = _map_values(elem.value, lambda v: _clean_text(v, ctx.phi_words))
        elem.value = cleaned
        return "C"
    else:  # Z, or an action that does not fit this element's VR
        elem.value = empty_value_for_VR(vr)
        return "Z"
    return action


def _item_path(path: str, elem: DataElement, index: int) -> str:
    name = elem.keyword or _tag_text(elem.tag)
    return f"{path}/{name}[{index}]" if path else f"{name}[{index}]"


@lru_cache(maxsize=8192)
def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@lru_cache(maxsize=8192)
def _keyword(tag: int) -> str:
    return keyword_for_tag(tag)


def _map_values(value: object, fn: Callable[[str], str | None]) -> object:
    """Apply fn to each value of a (multi-)valued element; None from fn -> None overall."""
    if value is None or value == "":
        return value
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    mapped = [fn(str(v)) for v in values]
    if any(m is None for m in mapped):
        return None
    return mapped if len(mapped) > 1 else mapped[0]


def _remap_if_instance(key: bytes, uid: str) -> str:
    uid = uid.strip().rstrip("\x00")
    if not uid or uid.startswith(DICOM_ROOT):
        return uid
    return remap_uid(key, uid)


def _dummy(elem: DataElement, ctx: _Context) -> object:
    if elem.tag in _PSEUDONYM_TAGS:
        return ctx.pseudonym
    if elem.VR == "UI":
        return _map_values(elem.value, lambda v: _remap_if_instance(ctx.key, v))
    if elem.VR in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
        return 0
    return _DUMMY_BY_VR.get(elem.VR, empty_value_for_VR(elem.VR))


_PSEUDONYM_TAGS = tags_for(("PatientName", "PatientID"))

# ---------------------------------------------------------------------------------------
# Clean descriptors: keep the words, drop what identifies

_DATE_LIKE = re.compile(r"\d{4}[-./]?\d{2}[-./]?\d{2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
_LONG_NUMBER = re.compile(r"\d{5,}")
_TITLED_NAME = re.compile(r"\b(?:mr|mrs|ms|miss|dr|prof)\b\.?\s*[^\s,;]+", re.IGNORECASE)
_DESCRIPTOR_TAGS = tags_for(DESCRIPTORS)


def _phi_words(ds: Dataset, profile: Profile) -> re.Pattern[str] | None:
    """Words of every value this profile removes or replaces (names, IDs, places...)."""
    words: set[str] = set()
    for elem in ds.iterall():
        if elem.VR not in _TEXT_VRS or elem.tag in _DESCRIPTOR_TAGS or not elem.value:
            continue
        if not elem.tag.is_private and profile.action(elem.tag, elem.VR) in ("K", "R"):
            continue
        values = elem.value if isinstance(elem.value, (MultiValue, list)) else [elem.value]
        for value in values:
            text = str(value)
            parts = re.split(r"[\^=\s,;/]+", text)
            words.update(p for p in parts if len(p) >= (2 if elem.VR == "PN" else 3))
            if len(text.strip()) >= 3:
                words.add(text.strip())
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])", re.IGNORECASE)


def _clean_text(value: str, phi_words: re.Pattern[str] | None) -> str:
    if phi_words is not None:
        value = phi_words.sub("*", value)
    value = _TITLED_NAME.sub("*", value)
    value = _DATE_LIKE.sub("*", value)
    value = _LONG_NUMBER.sub("*", value)
    return re.sub(r"\*(?:[\s^,;]*\*)+", "*", value).strip()


_DA = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_DT = re.compile(r"^(\d{8})(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?$")


def _shift(value: str, vr: str, days: int) -> str | None:
    """Shift one DA (or DA range) or DT value back by days; None when it cannot be parsed."""
    value = value.strip()
    if vr == "DA" and "-" in value:  # a date range, either end may be open
        parts = [_shift_date(p, days) if p else "" for p in value.split("-")]
        if len(parts) != 2 or any(p is None for p in parts):
            return None
        return f"{parts[0]}-{parts[1]}"
    if vr == "DA":
        return _shift_date(value, days)
    match = _DT.match(value)
    if not match:
        return None
    new_date = _shift_date(match.group(1), days)
    if new_date is None:
        return None
    return new_date + (match.group(2) or "") + (match.group(3) or "")


def _shift_date(value: str, days: int) -> str | None:
    match = _DA.match(value.strip())
    if not match:
        return None
    try:
        moved = date(*(int(g) for g in match.groups())) - timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}"


def _stamp(ds: Dataset, ctx: _Context, pixels_cleaned: bool) -> None:
    """Write the pseudonym and the de-identification markers (audited as D)."""
    options = ctx.settings.options
    methods = ctx.settings.method_items(pixels_cleaned)
    temporal = "MODIFIED" if options.retain_longitudinal_temporal else "REMOVED"
    elements = ds._dict
    for (tag, vr), value in zip(
        _STAMP_TAGS,
        (
            ctx.pseudonym,
            ctx.pseudonym,
            "YES",
            _method_text(options),
            Sequence(methods),  # items shared, read-only
            temporal,
        ),
        strict=True,
    ):
        if tag in elements:
            if tag in _PSEUDONYM_TAGS:
                continue  # already replaced (and audited) by D
            ds[tag].value = value  # as setattr does: the element read keeps its VR
        else:
            ds[tag] = DataElement(tag, vr, value, validation_mode=ctx.new_value_validation)
        ctx.record(tag, "D", "")


_STAMP_TAGS = tuple(
    (tag_for_keyword(k), dictionary_VR(k))
    for k in (
        "PatientName",
        "PatientID",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "LongitudinalTemporalInformationModified",
    )
)
_META_REMOVE_TAGS = tuple(tag_for_keyword(k) for k in _META_REMOVE)
_META_INSTANCE_UID = tag_for_keyword("MediaStorageSOPInstanceUID")
_SOP_INSTANCE_UID = tag_for_keyword("SOPInstanceUID")


def _clean_file_meta(ds: Dataset, ctx: _Context) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    elements = meta._dict
    for tag in _META_REMOVE_TAGS:
        if tag in elements:
            ctx.record(tag, "X", "file_meta")
            del meta[tag]
    for tag in [t for t in elements if t >> 16 & 1]:  # private
        ctx.record(tag, "X", "file_meta")
        del meta[tag]
    if _META_INSTANCE_UID in elements:
        sop_instance = ds[_SOP_INSTANCE_UID].value if _SOP_INSTANCE_UID in ds._dict else None
        new = sop_instance or _remap_if_instance(ctx.key, str(meta[_META_INSTANCE_UID].value))
        meta[_META_INSTANCE_UID].value = new
        ctx.record(_META_INSTANCE_UID, "U", "file_meta")


def encode_dataset(ds: Dataset) -> bytes:
    """Serialise ds as a DICOM Part 10 file with pydicom (file meta made consistent)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def anonymise_manifest(
    manifest: pd.DataFrame, out_dir: Path, key: bytes, settings: Settings | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """De-identify every manifest row into out_dir/files; returns (manifest, audit, quarantine).

    Only the schema columns survive (an extra column might carry an identifier). Input
    problems quarantine the row; failures to write (OSError) stop the stage, leaving no
    partial file.
    """
    settings = settings or default_settings()
    frame = mf.validate(manifest)
    files_dir = Path(out_dir) / "files"
    rows: list[dict] = []
    audit: list[dict] = []
    quarantined: list[mf.Quarantined] = []
    for row in frame[list(mf.COLUMNS)].to_dict("records"):
        try:
            new_row, entries = _anonymise_row(row, files_dir, key, settings)
        except _Quarantine as exc:
            quarantined.append(mf.Quarantined(str(row["source_path"]), STAGE, str(exc)))
            continue
        rows.append(new_row)
        audit.extend({"image_id": row["image_id"], **asdict(e)} for e in entries)
    new = mf.validate(pd.DataFrame(rows, columns=list(mf.COLUMNS))) if rows else mf.empty()
    log.info("anonymise: %d images written, %d quarantined", len(new), len(quarantined))
    return new, pd.DataFrame(audit, columns=AUDIT_COLUMNS), mf.quarantine_frame(quarantined)


def _anonymise_row(
    row: dict, files_dir: Path, key: bytes, settings: Settings
) -> tuple[dict, list[AuditEntry]]:
    patient = str(row["patient_key"] or "").strip()
    if not patient:
        raise _Quarantine("empty patient_key: cannot assign a pseudonym")
    patient_pseudonym = pseudonym(key, patient)
    src = Path(str(row["source_path"]))
    image_id = str(row["image_id"])
    if row["format"] == "dicom":
        data, entries = _deidentified_bytes(src, key, patient_pseudonym, settings)
        dest = _store_bytes(files_dir / f"{image_id}.dcm", data)
    else:
        _check_plain_file(src, f"{row['format']} image")
        dest = _store_copy(src, files_dir / f"{image_id}{file_extension(src)}")
        entries = []
    mask_dest = ""
    if row["mask_path"]:
        mask = Path(str(row["mask_path"]))
        try:
            _check_plain_file(mask, "mask")
        except _Quarantine:
            dest.unlink(missing_ok=True)
            raise
        mask_dest = str(_store_copy(mask, files_dir / f"{image_id}_mask{file_extension(mask)}"))
    new_row = dict(row)
    new_row.update(
        source_path=str(dest),
        mask_path=mask_dest,
        sha256=_file_sha256(dest),
        patient_key=patient_pseudonym,
        study_key=remap_key(key, row["study_key"]),
        series_key=remap_key(key, row["series_key"]),
    )
    return new_row, entries


def _deidentified_bytes(
    src: Path, key: bytes, patient_pseudonym: str | None, settings: Settings
) -> tuple[bytes, list[AuditEntry]]:
    """Read, check, de-identify and encode one DICOM file; any problem with the input ->
    _Quarantine. Only the exception's type is kept: its message could hold a value."""
    try:
        return _deidentify_file(src, key, patient_pseudonym, settings)
    except (_Quarantine, MemoryError):
        raise
    except Exception as exc:  # a reader, a value, an encoder: this file's problem
        raise _Quarantine(f"cannot de-identify: {type(exc).__name__}") from exc


def _deidentify_file(
    src: Path, key: bytes, patient_pseudonym: str | None, settings: Settings
) -> tuple[bytes, list[AuditEntry]]:
    ds = _read_dicom(src)
    try:
        imaging.transfer_syntax(ds)
    except imaging.ImageReadError as exc:
        raise _Quarantine(str(exc)) from exc
    sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    if sop_class == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        raise _Quarantine("DICOMDIR is not de-identified; rebuild it from the output files")
    _check_pixel_length(ds)
    cleaned = _handle_burned_in(ds, settings)
    try:
        entries = anonymise_dataset(
            ds,
            key,
            patient_pseudonym=patient_pseudonym,
            settings=settings,
            pixels_cleaned=cleaned,
        )
    except AnonymiseError as exc:
        raise _Quarantine(str(exc)) from exc
    try:
        data = encode_dataset(ds)
    except Exception as exc:  # the message could hold a value
        raise _Quarantine(f"cannot encode the de-identified dataset: {type(exc).__name__}") from exc
    return data, entries


def _handle_burned_in(ds: Dataset, settings: Settings) -> bool:
    """Black out a matching rule's regions (True), pass (False) or quarantine."""
    rule = matching_rule(ds, settings.blackout) if settings.blackout else None
    if rule is None:
        reason = burned_in_reason(ds)
        if reason:
            raise _Quarantine(f"{reason}; no anonymise.blackout rule matches this image")
        return False
    try:
        black_out(ds, rule)
    except Exception as exc:  # the message could hold a value
        raise _Quarantine(f"cannot clean pixel data: {type(exc).__name__}") from exc
    return True


def _check_pixel_length(ds: Dataset) -> None:
    """A truncated file may still parse; refuse native pixel data shorter than declared."""
    if "PixelData" not in ds or ds.file_meta.get("TransferSyntaxUID") is None:
        return
    if imaging.transfer_syntax(ds).is_compressed:
        return
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.SamplesPerPixel)
            * frames
            * int(ds.BitsAllocated)
            // 8
        )
    except Exception:
        raise _Quarantine("pixel data without a usable image description") from None
    if len(ds.get_item("PixelData").value or b"") < expected:
        raise _Quarantine("truncated pixel data (shorter than Rows x Columns x frames)")


def _read_dicom(src: Path) -> Dataset:
    try:
        return pydicom.dcmread(src, force=False)
    except Exception as exc:
        message = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise _Quarantine(f"unreadable DICOM ({type(exc).__name__}: {message})") from exc


def _check_plain_file(path: Path, what: str) -> None:
    """Non-DICOM inputs are copied as they are, so refuse anything that is really DICOM."""
    if not path.is_file():
        raise _Quarantine(f"{what} file missing")
    with path.open("rb") as handle:
        head = handle.read(132)
    if head[128:132] == b"DICM":
        raise _Quarantine(f"{what} is a DICOM file (e.g. SEG); only DICOM images are de-identified")


def file_extension(path: Path) -> str:
    """Extension for a copy: from the name when known, else from the magic bytes."""
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm"):
        if name.endswith(suffix):
            return suffix
    with path.open("rb") as handle:
        head = handle.read(348)
    if head.startswith(b"\x89PNG"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head.startswith(b"\x1f\x8b"):
        return ".nii.gz"
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00":
        return ".nii"
    return ""


def _store_bytes(dest: Path, data: bytes) -> Path:
    """Write under a hidden temporary name beside dest, then rename: complete or absent.

    (One open per file: the per-file path of the stage is hot, see the benchmark.)
    """
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    if not dest.parent.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _store_copy(src: Path, dest: Path) -> Path:
    return atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_tables(
    out_dir: Path, manifest: pd.DataFrame, audit: pd.DataFrame, quarantine: pd.DataFrame
) -> None:
    """Write manifest.csv, audit.csv and quarantine.csv (the contract's names) atomically."""
    out_dir = Path(out_dir)
    mf.write(manifest, out_dir / "manifest.csv")
    atomic_write_text(out_dir / "audit.csv", audit.to_csv(index=False))
    atomic_write_text(out_dir / "quarantine.csv", quarantine.to_csv(index=False))


def anonymise_tree(
    in_dir: Path, out_dir: Path, key: bytes, settings: Settings | None = None
) -> TreeSummary:
    """Mirror every file under in_dir as de-identified DICOM under out_dir.

    Relative paths are kept as they are, so folder and file names must not carry
    identifiers. Non-DICOM, burned-in and ID-less files are quarantined, not copied.
    """
    settings = settings or default_settings()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder {in_dir} does not exist")
    _refuse_overlap(in_dir, out_dir)
    walk = folders.walk(in_dir)
    files = walk.files
    audit: list[dict] = []
    quarantined = [mf.Quarantined(path, STAGE, reason) for path, reason in walk.refused]
    for src in files:
        rel = src.relative_to(in_dir)
        try:
            data, entries = _deidentified_bytes(src, key, None, settings)
        except _Quarantine as exc:
            quarantined.append(mf.Quarantined(str(src), STAGE, str(exc)))
            continue
        _store_bytes(out_dir / rel, data)
        audit.extend({"file": rel.as_posix(), **asdict(e)} for e in entries)
    audit_path, quarantine_path = out_dir / "audit.csv", out_dir / "quarantine.csv"
    audit_frame = pd.DataFrame(audit, columns=TREE_AUDIT_COLUMNS)
    atomic_write_text(audit_path, audit_frame.to_csv(index=False))
    atomic_write_text(quarantine_path, mf.quarantine_frame(quarantined).to_csv(index=False))
    seen = len(files) + len(walk.refused)
    written = seen - len(quarantined)
    log.info(
        "anonymise tree: %d files written, %d quarantined, %d hidden files passed over",
        written,
        len(quarantined),
        walk.hidden,
    )
    return TreeSummary(seen, written, len(quarantined), audit_path, quarantine_path, walk.hidden)


def _refuse_overlap(in_dir: Path, out_dir: Path) -> None:
    src, dst = in_dir.resolve(), out_dir.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise ValueError(f"--out {out_dir} must not be inside --in {in_dir} or contain it")


def describe(settings: Settings) -> str:
    """One log line: the table edition and the options applied (never a key or value)."""
    options = settings.options
    on = [name for name in OPTION_NAMES if getattr(options, name)]
    return (
        f"Table E.1-1 {options.edition}; options: {', '.join(on) or 'none'}; "
        f"{len(options.safe_private_tags)} safe private tags; "
        f"{len(settings.blackout)} blackout rules"
    )
