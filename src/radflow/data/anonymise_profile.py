"""The PS3.15 Table E.1-1 action table, its options, and one compiled tag -> action lookup.

Where the table comes from: the PyPI package ``dicom-anonymizer`` ships Table E.1-1 by
edition (``dicomanonymizer.dicom_anonymization_databases.dicomfields_<edition>``), one list
of tags per action code (D, Z, X, U, Z/D, X/Z, X/D, X/Z/D, X/Z/U*). radflow reads those
lists; nothing of the basic profile is typed here. The option columns of E.1-1 are not in
that package, so the attributes each option retains are listed below (``_OPTION_*``), with
their DCM codes taken from pydicom's code dictionary (CID 7050).

How a combined code is resolved (the standard leaves the choice to the IOD's Type; radflow
does not carry IOD tables, so it picks the choice that keeps the element present where a
Type 1/2 IOD may need it, and never keeps an original value):

=========  =====================================================================
code       radflow applies
=========  =====================================================================
Z/D, X/D   D (a dummy value; PatientID gets the pseudonym)
X/Z, X/Z/D Z (present, empty)
X/Z/U*     sequence: its items are walked (UIDs -> U, the rest by the table);
           other VRs: U for UI, else Z
D on SQ    the items are walked with the same rules (a "dummy" sequence that keeps
           structure, e.g. Content Sequence); Z/X on SQ: no items / removed
=========  =====================================================================

Internal codes after compilation: D Z X K U C (date shift) R (walk a sequence's items)
T (clean a descriptor: free text kept with identifying words removed; audited as C).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.sr.codedict import codes

TABLE_PACKAGE = "dicomanonymizer.dicom_anonymization_databases"
_CATEGORY_CODES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


def editions() -> list[str]:
    """Table E.1-1 editions shipped by dicom-anonymizer, oldest first (e.g. '2026c')."""
    package = importlib.import_module(TABLE_PACKAGE)
    names = [m.name for m in pkgutil.iter_modules(package.__path__)]
    return sorted(n.removeprefix("dicomfields_") for n in names if n.startswith("dicomfields_"))


DEFAULT_EDITION = editions()[-1]


def load_table(edition: str = DEFAULT_EDITION) -> tuple[dict[int, str], list[tuple[int, int]]]:
    """Return ({tag: E.1-1 code}, [(value, mask)] for masked entries like (50xx,xxxx))."""
    if edition not in editions():
        raise ValueError(
            f"unknown E.1-1 edition {edition!r}; dicom-anonymizer ships {', '.join(editions())}"
        )
    module = importlib.import_module(f"{TABLE_PACKAGE}.dicomfields_{edition}")
    exact: dict[int, str] = {}
    masked: list[tuple[int, int]] = []
    for category, code in _CATEGORY_CODES.items():
        for entry in getattr(module, category):
            if len(entry) == 4:  # (group, element, group mask, element mask)
                group, element, gmask, emask = entry
                masked.append(((group << 16) | element, (gmask << 16) | emask))
            else:
                exact[(entry[0] << 16) | entry[1]] = code
    return exact, masked


# ---------------------------------------------------------------------------------------
# Options (the E.1-1 option columns radflow supports); keywords checked at import.

_CHARACTERISTICS = (
    "PatientAge", "PatientSex", "PatientSize", "PatientWeight", "EthnicGroup",
    "PregnancyStatus", "SmokingStatus", "PatientSexNeutered", "PatientBodyMassIndex",
    "MeasuredAPDimension", "MeasuredLateralDimension", "PatientSizeCodeSequence",
)  # fmt: skip
_DEVICE = (
    "DeviceSerialNumber", "StationName", "DetectorID", "GantryID", "PlateID", "CassetteID",
    "DeviceUID", "DeviceLabel", "DeviceDescription", "GeneratorID", "SourceSerialNumber",
    "TreatmentMachineName", "PerformedStationName", "ScheduledStationName",
    "XRayDetectorID", "XRayDetectorLabel", "DeviceID", "UniqueDeviceIdentifier",
    "ManufacturerDeviceIdentifier", "ManufacturerDeviceClassUID", "LensMake", "LensModel",
    "LensSerialNumber", "CameraOwnerName", "MakerNote",
)  # fmt: skip
_INSTITUTION = (
    "InstitutionName", "InstitutionAddress", "InstitutionCodeSequence",
    "InstitutionalDepartmentName", "InstitutionalDepartmentTypeCodeSequence",
)  # fmt: skip
DESCRIPTORS = (
    "StudyDescription", "SeriesDescription", "ImageComments", "ProtocolName",
    "AcquisitionDeviceProcessingDescription", "PerformedProcedureStepDescription",
    "RequestedProcedureDescription", "ScheduledProcedureStepDescription",
    "DerivationDescription", "AcquisitionComments", "StudyComments", "FrameComments",
    "ContrastBolusAgent", "CommentsOnThePerformedProcedureStep", "ReasonForStudy",
    "ReasonForTheRequestedProcedure", "AcquisitionContextDescription",
)  # fmt: skip
# dates a whole-day shift must still not keep: birth and death
_NEVER_SHIFTED = (
    "PatientBirthDate", "PatientBirthTime", "PatientBirthDateInAlternativeCalendar",
    "PatientDeathDateInAlternativeCalendar", "LastMenstrualDate",
)  # fmt: skip
# hidden copies and signatures: removed whatever the table edition says
EXTRA_REMOVE = (
    "OriginalAttributesSequence", "DigitalSignaturesSequence", "MACParametersSequence",
    "EncryptedAttributesSequence", "HL7StructuredDocumentReferenceSequence",
    "IconImageSequence", "DeidentificationMethodCodeSequence",
)  # fmt: skip


def tags_for(keywords: tuple[str, ...]) -> frozenset[int]:
    out = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is not None:  # newer keywords than this pydicom knows are simply absent
            out.add(tag)
    return frozenset(out)


for _kw in (*_INSTITUTION, *DESCRIPTORS[:5], *EXTRA_REMOVE, "PatientAge", "StationName"):
    if tag_for_keyword(_kw) is None:  # a typo here must fail loudly
        raise ValueError(f"unknown DICOM keyword {_kw!r} in the option lists")


@dataclass(frozen=True)
class SafePrivate:
    """A private element known to carry no identity: group, creator and element offset."""

    group: int
    creator: str
    element: int  # the low byte (xx of gggg,yyxx)


# The PS3.15 options radflow offers, by their params key (and Options field) name.
OPTION_NAMES = (
    "retain_longitudinal_temporal",
    "retain_patient_characteristics",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_uids",
    "clean_descriptors",
)


@dataclass(frozen=True)
class Options:
    retain_longitudinal_temporal: bool = True
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_uids: bool = False
    clean_descriptors: bool = False
    safe_private_tags: tuple[SafePrivate, ...] = ()
    edition: str = DEFAULT_EDITION

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> Options:
        """From params["anonymise"] with the schema's defaults filled (params.with_defaults)."""
        safe = tuple(
            SafePrivate(_as_int(e["group"]), str(e["creator"]).strip(), _as_int(e["element"]))
            for e in params["safe_private_tags"]  # type: ignore[union-attr]
        )
        for entry in safe:
            if not entry.group & 1 or not 0 <= entry.element <= 0xFF:
                raise ValueError(f"anonymise.safe_private_tags: not a private element: {entry}")
        flags = {name: bool(params[name]) for name in OPTION_NAMES}
        edition = str(params["table_edition"] or DEFAULT_EDITION)  # null: the newest
        return cls(**flags, safe_private_tags=safe, edition=edition)

    def method_codes(self, pixels_cleaned: bool = False) -> list[tuple[str, str]]:
        """(code value, meaning) of CID 7050 for what was applied, basic profile first."""
        chosen = [codes.DCM.BasicApplicationConfidentialityProfile]
        if pixels_cleaned:
            chosen.append(codes.DCM.CleanPixelDataOption)
        if self.clean_descriptors:
            chosen.append(codes.DCM.CleanDescriptorsOption)
        if self.retain_longitudinal_temporal:
            chosen.append(codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption)
        if self.retain_patient_characteristics:
            chosen.append(codes.DCM.RetainPatientCharacteristicsOption)
        if self.retain_device_identity:
            chosen.append(codes.DCM.RetainDeviceIdentityOption)
        if self.retain_uids:
            chosen.append(codes.DCM.RetainUidsOption)
        if self.safe_private_tags:
            chosen.append(codes.DCM.RetainSafePrivateOption)
        if self.retain_institution_identity:
            chosen.append(codes.DCM.RetainInstitutionIdentityOption)
        return [(c.value, c.meaning) for c in chosen]


def _as_int(value: object) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# The compiled profile


def _vr_of(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


def resolve(code: str, vr: str) -> str:
    """One E.1-1 code (maybe combined) -> one internal action for an element of this VR."""
    if vr == "SQ":
        if code in ("D", "X/Z/U*"):
            return "R"
        if code == "U":
            return "R"
        return "Z" if "Z" in code else "X" if "X" in code else code
    if code == "X/Z/U*":
        return "U" if vr == "UI" else "Z"
    return {"Z/D": "D", "X/D": "D", "X/Z": "Z", "X/Z/D": "Z"}.get(code, code)


@dataclass
class Profile:
    """Tag -> action, compiled once for a set of options; fallback rules fill in lazily."""

    options: Options
    table: dict[int, str]  # the E.1-1 code per tag, as shipped
    actions: dict[int, str] = field(default_factory=dict)  # resolved, options applied
    masked: list[tuple[int, int, str]] = field(default_factory=list)

    def action(self, tag: int, vr: str | None) -> str:
        """The action for a public, non-overlay element (private/overlay handled by caller)."""
        action = self.actions.get(tag)
        if action is None:
            action = self._fallback(tag, vr)
            self.actions[tag] = action
        return action

    def _fallback(self, tag: int, vr: str | None) -> str:
        for value, mask, action in self.masked:
            if tag & mask == value:
                return action
        vr = _vr_of(tag) or vr or "UN"
        keyword = keyword_for_tag(tag)
        if vr == "SQ":
            return "R"  # kept, but its items are walked with the same rules
        if vr == "UI":
            class_uid = keyword.endswith("ClassUID") or "TransferSyntax" in keyword
            return "K" if class_uid or self.options.retain_uids else "U"
        if vr == "PN":
            return "Z"
        if vr in ("DA", "DT"):
            return "C" if self.options.retain_longitudinal_temporal else "X"
        if vr in ("LT", "ST", "UT", "UN") or " or " in vr and not keyword:
            return "X"
        return "K"


def build_profile(options: Options = Options()) -> Profile:
    table, masked = load_table(options.edition)
    actions: dict[int, str] = {}
    for tag, code in table.items():
        actions[tag] = resolve(code, _vr_of(tag))
    for tag in tags_for(EXTRA_REMOVE):
        actions[tag] = "X"
    longitudinal = options.retain_longitudinal_temporal
    never_shifted = tags_for(_NEVER_SHIFTED)
    for tag, action in list(actions.items()):
        vr = _vr_of(tag)
        if longitudinal and tag not in never_shifted and action in ("D", "Z", "X"):
            if vr in ("DA", "DT"):
                actions[tag] = "C"
            elif vr == "TM":
                actions[tag] = "K"  # a whole-day shift leaves the time of day as it was
        if options.retain_uids and action == "U":
            actions[tag] = "K" if vr != "SQ" else "R"
    for flag, keywords, action in (
        (options.retain_patient_characteristics, _CHARACTERISTICS, "K"),
        (options.retain_device_identity, _DEVICE, "K"),
        (options.retain_institution_identity, _INSTITUTION, "K"),
        (options.clean_descriptors, DESCRIPTORS, "T"),
    ):
        if flag:
            for tag in tags_for(keywords):
                actions[tag] = "R" if action == "K" and _vr_of(tag) == "SQ" else action
    if options.retain_device_identity or options.retain_uids:
        device_uid = tag_for_keyword("DeviceUID")
        actions[device_uid] = "K"
    # PatientName/PatientID carry the pseudonym (the manifest and later stages key on it)
    for keyword in ("PatientName", "PatientID"):
        actions[tag_for_keyword(keyword)] = "D"
    masked_actions = [(v, m, resolve(table_code, "")) for (v, m), table_code in _masked(masked)]
    return Profile(options, table, actions, masked_actions)


def _masked(masked: list[tuple[int, int]]) -> list[tuple[tuple[int, int], str]]:
    return [((v & m, m), "X") for v, m in masked]
