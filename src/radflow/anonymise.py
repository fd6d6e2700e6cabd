"""De-identification: the radflow basic profile v1 (a step towards PS3.15 Annex E).

Why this shape: every element of a dataset gets one action code from a table keyed by tag,
the codes of PS3.15 Table E.1-1, so that a versioned E.1-1 table can later replace
``BASIC_PROFILE_V1`` without touching the code that applies it:

====  ==========================================================================
code  meaning here
====  ==========================================================================
D     replace with a dummy value; PatientName and PatientID get the pseudonym
Z     replace with an empty value (sequence: no items)
X     remove the element (sequence: with all its items)
K     keep (a kept sequence is still walked: its items get the same rules)
C     clean: DA/DT values move back by the patient's keyed offset in whole days;
      a value that cannot be parsed is emptied instead (audited as Z)
U     replace each UID by ``2.25.<int>`` from HMAC-SHA256(key, uid): the same UID
      gives the same new UID in every file and run with the same key; UIDs under
      the DICOM root 1.2.840.10008 (well-known, not instance-specific) are kept
====  ==========================================================================

How an element's action is found, in this order, at every sequence depth:

1. private tags (odd groups, private creators included): X
2. curves (50xx,xxxx), overlays (60xx,xxxx) and group lengths (gggg,0000): X
3. the table (``BASIC_PROFILE_V1``, by keyword below)
4. by VR, for elements the table does not name: UI -> U (class and transfer syntax UIDs
   -> K), PN -> Z, DA/DT -> C, free text LT/ST/UT -> X, UN (unknown content) -> X
5. anything else: K

The table, by group (see ``_PATIENT`` ... ``_CONTAINERS`` for the full lists):

- patient: PatientName, PatientID -> D (pseudonym); PatientBirthDate -> Z; other IDs,
  other names, birth time/name, address, telephone/telecom, residence, military rank,
  ethnic group, occupation, religion, insurance, comments, history, alerts, allergies,
  size, weight, responsible person -> X; PatientSex, PatientAge -> K (kept by default:
  the "Retain Patient Characteristics" choice is a later option)
- visit and request: AccessionNumber, StudyID -> Z; admission, requested/scheduled/
  performed procedure IDs and descriptions, order numbers, RequestAttributesSequence -> X
- free text: StudyDescription, SeriesDescription, ImageComments, StudyComments,
  AcquisitionComments, FrameComments, DerivationDescription, ProtocolName ... -> X
- people and places: ReferringPhysicianName, ContentCreatorName -> Z; all other
  physicians, operators, institution name/address/department, station name, device
  serial number, detector/gantry/plate/cassette IDs, time zone offset -> X
- UIDs: Study/Series/SOP instance, frame of reference, referenced SOP instance, device,
  instance creator, irradiation event, concatenation ... -> U; SOP class, referenced SOP
  class, transfer syntax, coding scheme UIDs -> K
- dates: StudyDate, SeriesDate, AcquisitionDate, ContentDate, InstanceCreationDate,
  AcquisitionDateTime (and every other DA/DT by VR) -> C; times (TM) -> K, because a
  whole-day shift leaves the time of day as it was
- containers of hidden copies: OriginalAttributesSequence, digital signatures, MAC and
  encrypted attributes, HL7 document references, icon images,
  DeidentificationMethodCodeSequence -> X

Afterwards PatientIdentityRemoved = YES, DeidentificationMethod = ``PROFILE_NAME``,
LongitudinalTemporalInformationModified = MODIFIED, the file meta
MediaStorageSOPInstanceUID = the new SOPInstanceUID, the application entity titles,
presentation addresses and private information of the file meta are removed and the
128-byte preamble is zeroed (it can hold a TIFF header with its own metadata).

Not done yet (the report says so): pixel data are never inspected, so images that may
carry burned-in text (BurnedInAnnotation YES, US, SC/secondary capture, XC photographs)
are quarantined rather than cleaned; non-DICOM files (PNG, JPEG, NIfTI) are copied byte
for byte, so text chunks, EXIF or NIfTI descrip/extensions are not scrubbed.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import pandas as pd
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from radflow import manifest as mf
from radflow.fileio import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

Action = Literal["D", "Z", "X", "K", "C", "U"]

PROFILE_NAME = "radflow basic profile v1"
STAGE = "anonymise"
DEFAULT_KEY_ENV = "RADFLOW_PSEUDONYM_KEY"
MIN_KEY_BYTES = 16
# Public on purpose: anyone can recompute demo pseudonyms. Never use it for real data.
DEMO_KEY = b"radflow-PUBLIC-demo-key:not-secret:never-use-for-real-data"
DICOM_ROOT = "1.2.840.10008."
DATE_SHIFT_DAYS = (366, 3652)  # dates move back by 1 to 10 years, per patient
AUDIT_COLUMNS = ["image_id", "tag", "keyword", "action", "path"]
TREE_AUDIT_COLUMNS = ["file", "tag", "keyword", "action", "path"]

# ---------------------------------------------------------------------------------------
# The action table (keyword -> code). Keywords are checked against pydicom's dictionary at
# import, so a typo fails loudly instead of silently keeping an identifier.

_PATIENT: dict[str, Action] = {
    "PatientName": "D",
    "PatientID": "D",
    "IssuerOfPatientID": "X",
    "IssuerOfPatientIDQualifiersSequence": "X",
    "TypeOfPatientID": "X",
    "OtherPatientIDs": "X",
    "OtherPatientIDsSequence": "X",
    "OtherPatientNames": "X",
    "PatientBirthDate": "Z",
    "PatientBirthTime": "X",
    "PatientBirthName": "X",
    "PatientMotherBirthName": "X",
    "PatientBirthDateInAlternativeCalendar": "X",
    "PatientDeathDateInAlternativeCalendar": "X",
    "PatientAlternativeCalendar": "X",
    "PatientAddress": "X",
    "PatientTelephoneNumbers": "X",
    "PatientTelecomInformation": "X",
    "CountryOfResidence": "X",
    "RegionOfResidence": "X",
    "MilitaryRank": "X",
    "BranchOfService": "X",
    "MedicalRecordLocator": "X",
    "EthnicGroup": "X",
    "Occupation": "X",
    "PatientReligiousPreference": "X",
    "PatientInsurancePlanCodeSequence": "X",
    "PatientPrimaryLanguageCodeSequence": "X",
    "PatientComments": "X",
    "AdditionalPatientHistory": "X",
    "MedicalAlerts": "X",
    "Allergies": "X",
    "SmokingStatus": "X",
    "LastMenstrualDate": "X",
    "PatientState": "X",
    "SpecialNeeds": "X",
    "PatientTransportArrangements": "X",
    "PatientSize": "X",
    "PatientWeight": "X",
    "ResponsiblePerson": "X",
    "ResponsibleOrganization": "X",
    "ReferencedPatientSequence": "X",
    "ReferencedPatientPhotoSequence": "X",
    "PatientSex": "K",
    "PatientAge": "K",
}

_VISIT: dict[str, Action] = {
    "AccessionNumber": "Z",
    "IssuerOfAccessionNumberSequence": "X",
    "StudyID": "Z",
    "StudyIDIssuer": "X",
    "AdmissionID": "X",
    "AdmittingDiagnosesDescription": "X",
    "AdmittingDiagnosesCodeSequence": "X",
    "DischargeDiagnosisDescription": "X",
    "CurrentPatientLocation": "X",
    "PatientInstitutionResidence": "X",
    "VisitComments": "X",
    "RequestAttributesSequence": "X",
    "RequestedProcedureDescription": "X",
    "RequestedProcedureID": "X",
    "RequestedProcedureComments": "X",
    "RequestedProcedureLocation": "X",
    "ReasonForStudy": "X",
    "ReasonForTheRequestedProcedure": "X",
    "ImagingServiceRequestComments": "X",
    "PlacerOrderNumberImagingServiceRequest": "X",
    "FillerOrderNumberImagingServiceRequest": "X",
    "ScheduledProcedureStepDescription": "X",
    "ScheduledProcedureStepID": "X",
    "ScheduledProcedureStepLocation": "X",
    "PerformedProcedureStepDescription": "X",
    "PerformedProcedureStepID": "X",
    "ReferencedPerformedProcedureStepSequence": "X",
}

_FREE_TEXT: dict[str, Action] = {
    "StudyDescription": "X",
    "SeriesDescription": "X",
    "ImageComments": "X",
    "StudyComments": "X",
    "AcquisitionComments": "X",
    "FrameComments": "X",
    "DerivationDescription": "X",
    "ProtocolName": "X",
    "AcquisitionDeviceProcessingDescription": "X",
    "IdentifyingComments": "X",
    "TextString": "X",
}

_PEOPLE_AND_PLACES: dict[str, Action] = {
    "ReferringPhysicianName": "Z",
    "ReferringPhysicianAddress": "X",
    "ReferringPhysicianTelephoneNumbers": "X",
    "ReferringPhysicianIdentificationSequence": "X",
    "ConsultingPhysicianName": "X",
    "ConsultingPhysicianIdentificationSequence": "X",
    "PerformingPhysicianName": "X",
    "PerformingPhysicianIdentificationSequence": "X",
    "NameOfPhysiciansReadingStudy": "X",
    "PhysiciansReadingStudyIdentificationSequence": "X",
    "PhysiciansOfRecord": "X",
    "PhysiciansOfRecordIdentificationSequence": "X",
    "RequestingPhysician": "X",
    "RequestingService": "X",
    "ScheduledPerformingPhysicianName": "X",
    "OperatorsName": "X",
    "OperatorIdentificationSequence": "X",
    "ContentCreatorName": "Z",
    "ContentCreatorIdentificationCodeSequence": "X",
    "InstitutionName": "X",
    "InstitutionAddress": "X",
    "InstitutionalDepartmentName": "X",
    "InstitutionCodeSequence": "X",
    "InstitutionalDepartmentTypeCodeSequence": "X",
    "StationName": "X",
    "DeviceSerialNumber": "X",
    "DetectorID": "X",
    "GantryID": "X",
    "PlateID": "X",
    "CassetteID": "X",
    "PerformedStationName": "X",
    "PerformedLocation": "X",
    "ScheduledStationName": "X",
    "TimezoneOffsetFromUTC": "X",
}

_UIDS: dict[str, Action] = {
    "StudyInstanceUID": "U",
    "SeriesInstanceUID": "U",
    "SOPInstanceUID": "U",
    "FrameOfReferenceUID": "U",
    "ReferencedSOPInstanceUID": "U",
    "ReferencedFrameOfReferenceUID": "U",
    "RelatedFrameOfReferenceUID": "U",
    "SynchronizationFrameOfReferenceUID": "U",
    "InstanceCreatorUID": "U",
    "IrradiationEventUID": "U",
    "ConcatenationUID": "U",
    "DimensionOrganizationUID": "U",
    "DeviceUID": "U",
    "StorageMediaFileSetUID": "U",
    "SOPClassUID": "K",
    "ReferencedSOPClassUID": "K",
    "ReferencedSOPClassUIDInFile": "K",
    "MediaStorageSOPClassUID": "K",
    "TransferSyntaxUID": "K",
    "ReferencedTransferSyntaxUIDInFile": "K",
    "ImplementationClassUID": "K",
    "CodingSchemeUID": "K",
    "ContextGroupExtensionCreatorUID": "K",
    "MappingResourceUID": "K",
    "ContextUID": "K",
}

_DATES_AND_TIMES: dict[str, Action] = {
    "StudyDate": "C",
    "SeriesDate": "C",
    "AcquisitionDate": "C",
    "ContentDate": "C",
    "InstanceCreationDate": "C",
    "AcquisitionDateTime": "C",
    "PerformedProcedureStepStartDate": "C",
    "StudyTime": "K",
    "SeriesTime": "K",
    "AcquisitionTime": "K",
    "ContentTime": "K",
    "InstanceCreationTime": "K",
}

_CONTAINERS: dict[str, Action] = {
    "OriginalAttributesSequence": "X",
    "DigitalSignaturesSequence": "X",
    "MACParametersSequence": "X",
    "EncryptedAttributesSequence": "X",
    "HL7StructuredDocumentReferenceSequence": "X",
    "IconImageSequence": "X",
    "DeidentificationMethodCodeSequence": "X",
}

BASIC_PROFILE_V1_KEYWORDS: dict[str, Action] = {
    **_PATIENT,
    **_VISIT,
    **_FREE_TEXT,
    **_PEOPLE_AND_PLACES,
    **_UIDS,
    **_DATES_AND_TIMES,
    **_CONTAINERS,
}

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

_DUMMY_BY_VR = {
    "PN": "ANONYMOUS",
    "LO": "ANONYMISED",
    "SH": "ANONYMISED",
    "LT": "ANONYMISED",
    "ST": "ANONYMISED",
    "UT": "ANONYMISED",
    "CS": "ANONYMISED",
    "AE": "ANONYMISED",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "IS": "0",
    "DS": "0",
    "AS": "000D",
}

# Burned-in text is likely in these; pixel cleaning does not exist yet.
_BURNED_IN_MODALITIES = {"US": "ultrasound", "SC": "secondary capture", "XC": "photograph"}
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


class AnonymiseError(ValueError):
    """A dataset cannot be de-identified as asked (the message names what is missing)."""


class KeyConfigError(ValueError):
    """No usable pseudonymisation key; the message names the variable or file to set."""


class _Quarantine(Exception):
    """Internal: this input goes to the quarantine table with the message as reason."""


def table_from_keywords(table: Mapping[str, Action]) -> dict[BaseTag, Action]:
    """Resolve keywords to tags once, failing on unknown keywords or action codes."""
    out: dict[BaseTag, Action] = {}
    for keyword, action in table.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"unknown DICOM keyword {keyword!r} in the action table")
        if action not in ("D", "Z", "X", "K", "C", "U"):
            raise ValueError(f"unknown action {action!r} for {keyword} in the action table")
        out[Tag(tag)] = action
    return out


BASIC_PROFILE_V1: dict[BaseTag, Action] = table_from_keywords(BASIC_PROFILE_V1_KEYWORDS)


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


@dataclass
class _Context:
    key: bytes
    pseudonym: str
    shift_days: int
    table: Mapping[BaseTag, Action]
    entries: list[AuditEntry] = field(default_factory=list)

    def record(self, elem: DataElement, action: str, path: str) -> None:
        self.entries.append(AuditEntry(_tag_text(elem.tag), elem.keyword, action, path))


# ---------------------------------------------------------------------------------------
# Keys, pseudonyms, UIDs, date shifts


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def pseudonym(key: bytes, patient_id: str, issuer: str = "") -> str:
    """Keyed, stable patient pseudonym; surrounding whitespace (DICOM padding) is ignored."""
    digest = _hmac(key, f"{issuer.strip()}\x00{patient_id.strip()}")
    return "RF-" + digest.hex()[:16]


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
    env_name = str(anonymise_params.get("key_env") or DEFAULT_KEY_ENV)
    key_file = anonymise_params.get("key_file")
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


def action_for(elem: DataElement, table: Mapping[BaseTag, Action] = BASIC_PROFILE_V1) -> Action:
    """The action for one element: fixed rules, then the table, then the VR fallback."""
    tag = elem.tag
    if tag.is_private or (tag.group & 0xFF00) in (0x5000, 0x6000):
        return "X"
    if tag.element == 0 and tag.group != 0x0002:
        return "X"
    if tag in table:
        return table[tag]
    return _action_by_vr(elem)


def _action_by_vr(elem: DataElement) -> Action:
    vr = elem.VR
    if vr == "UI":
        return "K" if _is_class_uid(elem.keyword) else "U"
    if vr == "PN":
        return "Z"
    if vr in ("DA", "DT"):
        return "C"
    if vr in ("LT", "ST", "UT", "UN"):
        return "X"
    return "K"


def _is_class_uid(keyword: str) -> bool:
    return keyword.endswith("ClassUID") or "TransferSyntax" in keyword


def anonymise_dataset(
    ds: Dataset,
    key: bytes,
    *,
    patient_pseudonym: str | None = None,
    table: Mapping[BaseTag, Action] = BASIC_PROFILE_V1,
) -> list[AuditEntry]:
    """De-identify ds in place and return what was done (never any value).

    patient_pseudonym: give it when the caller already knows the patient (the manifest's
    patient_key); otherwise it is pseudonym(key, PatientID, IssuerOfPatientID).
    """
    if patient_pseudonym is None:
        patient_pseudonym = _pseudonym_from_header(ds, key)
    ctx = _Context(key, patient_pseudonym, date_shift_days(key, patient_pseudonym), table)
    _walk(ds, ctx, "")
    ds.remove_private_tags()
    _stamp(ds, ctx)
    _clean_file_meta(ds, ctx)
    ds.preamble = b"\x00" * 128
    return ctx.entries


def _pseudonym_from_header(ds: Dataset, key: bytes) -> str:
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        raise AnonymiseError("no PatientID in the header: cannot assign a stable pseudonym")
    return pseudonym(key, patient_id, str(ds.get("IssuerOfPatientID", "") or ""))


def _walk(ds: Dataset, ctx: _Context, path: str) -> None:
    for tag in list(ds.keys()):
        elem = ds[tag]
        action = action_for(elem, ctx.table)
        if elem.VR == "SQ" and action not in ("X", "Z"):
            for i, item in enumerate(elem.value):
                _walk(item, ctx, _item_path(path, elem, i))
            continue
        applied = _apply(ds, tag, elem, action, ctx)
        if applied != "K":
            ctx.record(elem, applied, path)


def _apply(ds: Dataset, tag: BaseTag, elem: DataElement, action: Action, ctx: _Context) -> str:
    """Carry out one action; returns the action actually applied (C may fall back to Z)."""
    if action == "X":
        del ds[tag]
    elif action == "Z":
        elem.value = empty_value_for_VR(elem.VR)
    elif action == "D":
        elem.value = _dummy(elem, ctx)
    elif action == "U":
        elem.value = _map_values(elem.value, lambda v: _remap_if_instance(ctx.key, v))
    elif action == "C":
        shifted = _map_values(elem.value, lambda v: _shift(v, elem.VR, ctx.shift_days))
        if shifted is None:
            elem.value = empty_value_for_VR(elem.VR)
            return "Z"
        elem.value = shifted
    return action


def _item_path(path: str, elem: DataElement, index: int) -> str:
    name = elem.keyword or _tag_text(elem.tag)
    return f"{path}/{name}[{index}]" if path else f"{name}[{index}]"


def _tag_text(tag: BaseTag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"


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
    if elem.keyword in ("PatientName", "PatientID"):
        return ctx.pseudonym
    if elem.VR == "UI":
        return _map_values(elem.value, lambda v: _remap_if_instance(ctx.key, v))
    return _DUMMY_BY_VR.get(elem.VR, empty_value_for_VR(elem.VR))


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


def _stamp(ds: Dataset, ctx: _Context) -> None:
    """Write the pseudonym and the de-identification markers (audited as D)."""
    for keyword, value in (
        ("PatientName", ctx.pseudonym),
        ("PatientID", ctx.pseudonym),
        ("PatientIdentityRemoved", "YES"),
        ("DeidentificationMethod", PROFILE_NAME),
        ("LongitudinalTemporalInformationModified", "MODIFIED"),
    ):
        present = keyword in ds
        if present and keyword in ("PatientName", "PatientID"):
            continue  # already replaced (and audited) by the table's D
        setattr(ds, keyword, value)
        ctx.record(ds[keyword], "D", "")


def _clean_file_meta(ds: Dataset, ctx: _Context) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for keyword in _META_REMOVE:
        if keyword in meta:
            ctx.record(meta[keyword], "X", "file_meta")
            delattr(meta, keyword)
    for tag in [t for t in list(meta.keys()) if Tag(t).is_private]:
        ctx.record(meta[tag], "X", "file_meta")
        del meta[tag]
    if "MediaStorageSOPInstanceUID" in meta:
        new = ds.get("SOPInstanceUID") or _remap_if_instance(
            ctx.key, str(meta.MediaStorageSOPInstanceUID)
        )
        meta.MediaStorageSOPInstanceUID = new
        ctx.record(meta["MediaStorageSOPInstanceUID"], "U", "file_meta")


def burned_in_reason(ds: Dataset) -> str | None:
    """Why the pixels may show identifying text, or None; such images are quarantined."""
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return "burned-in annotation: BurnedInAnnotation is YES (pixel cleaning not implemented)"
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality in _BURNED_IN_MODALITIES:
        kind = _BURNED_IN_MODALITIES[modality]
        return f"possible burned-in annotation: Modality {modality} ({kind}); not cleaned yet"
    if str(ds.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE_PREFIX):
        return "possible burned-in annotation: Secondary Capture SOP class; not cleaned yet"
    return None


def encode_dataset(ds: Dataset) -> bytes:
    """Serialise ds as a DICOM Part 10 file in its original transfer syntax."""
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRBigEndian
            if little is False
            else ExplicitVRLittleEndian
        )
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------
# Files: the manifest stage and the standalone tree mode


def anonymise_manifest(
    manifest: pd.DataFrame, out_dir: Path, key: bytes
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """De-identify every manifest row into out_dir/files; returns (manifest, audit, quarantine).

    Only the schema columns survive (an extra column might carry an identifier). Input
    problems quarantine the row; failures to write (OSError) stop the stage, leaving no
    partial file.
    """
    frame = mf.validate(manifest)
    files_dir = Path(out_dir) / "files"
    rows: list[dict] = []
    audit: list[dict] = []
    quarantined: list[mf.Quarantined] = []
    for row in frame[list(mf.COLUMNS)].to_dict("records"):
        try:
            new_row, entries = _anonymise_row(row, files_dir, key)
        except _Quarantine as exc:
            quarantined.append(mf.Quarantined(str(row["source_path"]), STAGE, str(exc)))
            continue
        rows.append(new_row)
        audit.extend({"image_id": row["image_id"], **asdict(e)} for e in entries)
    new = mf.validate(pd.DataFrame(rows, columns=list(mf.COLUMNS))) if rows else mf.empty()
    log.info("anonymise: %d images written, %d quarantined", len(new), len(quarantined))
    return new, pd.DataFrame(audit, columns=AUDIT_COLUMNS), mf.quarantine_frame(quarantined)


def _anonymise_row(row: dict, files_dir: Path, key: bytes) -> tuple[dict, list[AuditEntry]]:
    patient = str(row["patient_key"] or "").strip()
    if not patient:
        raise _Quarantine("empty patient_key: cannot assign a pseudonym")
    patient_pseudonym = pseudonym(key, patient)
    src = Path(str(row["source_path"]))
    image_id = str(row["image_id"])
    if row["format"] == "dicom":
        data, entries = _deidentified_bytes(src, key, patient_pseudonym)
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
    src: Path, key: bytes, patient_pseudonym: str | None
) -> tuple[bytes, list[AuditEntry]]:
    """Read, check, de-identify and encode one DICOM file; input problems -> _Quarantine."""
    ds = _read_dicom(src)
    reason = burned_in_reason(ds)
    if reason:
        raise _Quarantine(reason)
    sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    if sop_class == MediaStorageDirectoryStorage:
        raise _Quarantine("DICOMDIR is not de-identified; rebuild it from the output files")
    try:
        entries = anonymise_dataset(ds, key, patient_pseudonym=patient_pseudonym)
    except AnonymiseError as exc:
        raise _Quarantine(str(exc)) from exc
    except Exception as exc:  # malformed element values; the message could hold a value
        raise _Quarantine(f"cannot de-identify: {type(exc).__name__}") from exc
    try:
        data = encode_dataset(ds)
    except Exception as exc:  # the message could hold a value
        raise _Quarantine(f"cannot encode the de-identified dataset: {type(exc).__name__}") from exc
    return data, entries


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
    return atomic_write(dest, lambda tmp: tmp.write_bytes(data))


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


def anonymise_tree(in_dir: Path, out_dir: Path, key: bytes) -> TreeSummary:
    """Mirror every file under in_dir as de-identified DICOM under out_dir.

    Relative paths are kept as they are, so folder and file names must not carry
    identifiers. Non-DICOM, burned-in and ID-less files are quarantined, not copied.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder {in_dir} does not exist")
    _refuse_overlap(in_dir, out_dir)
    files = sorted(p for p in in_dir.rglob("*") if p.is_file())
    audit: list[dict] = []
    quarantined: list[mf.Quarantined] = []
    for src in files:
        rel = src.relative_to(in_dir)
        try:
            data, entries = _deidentified_bytes(src, key, None)
        except _Quarantine as exc:
            quarantined.append(mf.Quarantined(str(src), STAGE, str(exc)))
            continue
        _store_bytes(out_dir / rel, data)
        audit.extend({"file": rel.as_posix(), **asdict(e)} for e in entries)
    audit_path, quarantine_path = out_dir / "audit.csv", out_dir / "quarantine.csv"
    audit_frame = pd.DataFrame(audit, columns=TREE_AUDIT_COLUMNS)
    atomic_write_text(audit_path, audit_frame.to_csv(index=False))
    atomic_write_text(quarantine_path, mf.quarantine_frame(quarantined).to_csv(index=False))
    written = len(files) - len(quarantined)
    log.info("anonymise tree: %d files written, %d quarantined", written, len(quarantined))
    return TreeSummary(len(files), written, len(quarantined), audit_path, quarantine_path)


def _refuse_overlap(in_dir: Path, out_dir: Path) -> None:
    src, dst = in_dir.resolve(), out_dir.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise ValueError(f"--out {out_dir} must not be inside --in {in_dir} or contain it")
