"""Named presets for CRM exports: column mapping, parsing rules and default stages.

A preset tells :func:`forecast.read_deal_log` where the canonical columns of
``docs/internals.md`` §2 are in a vendor's export, how its timestamps are written,
which rows to drop on purpose (counted in the report), and how its stages are
classified by default.

Column names come from the vendors' documentation:

``"salesforce"`` — the ``OpportunityHistory`` object ("Represents the stage history
of an opportunity"), Salesforce Object Reference,
https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_objects_opportunityhistory.htm
and the field reference (labels),
https://developer.salesforce.com/docs/atlas.en-us.196.0.sfFieldRef.meta/sfFieldRef/salesforce_field_reference_OpportunityHistory.htm :
``OpportunityId`` (reference to the Opportunity; label "Opportunity"),
``CreatedDate`` (datetime the history row was written, i.e. when the change
happened; label "Created Date"), ``StageName`` (picklist; label "Stage Name"),
``Amount`` (currency), ``CloseDate`` (date the opportunity is expected to close),
``IsDeleted`` (moved to the Recycle Bin; label "Deleted"). Also present but unused:
``Id``, ``ExpectedRevenue``, ``Probability``, ``ForecastCategory``, ``PrevAmount``,
``PrevCloseDate``, ``SystemModstamp``, ``CreatedById``. The API writes datetimes as
``2024-01-15T10:30:00.000+0000`` and dates as ``2024-01-15``. The history has no
opportunity creation date: the first history row dates the deal. Stage names are
per-org picklist values, so stages are inferred by name (Salesforce's standard
sales process — Prospecting, Qualification, Needs Analysis, Value Proposition,
Id. Decision Makers, Perception Analysis, Proposal/Price Quote, Negotiation/Review,
Closed Won, Closed Lost — is recognised) unless a ``StageMap`` is given.

``"hubspot"`` — the deal stage history, one row per change of the ``dealstage``
property as returned by the CRM deals API with ``propertiesWithHistory=dealstage``
(each version has ``value`` and ``timestamp``; the legacy v1 API's
``includePropertyVersions`` gives ``versions`` with epoch-millisecond timestamps),
https://developers.hubspot.com/docs/api/crm/deals , flattened to columns:
deal id (``hs_object_id``; v1 and legacy exports call it ``dealId``; UI exports
"Record ID"), ``dealstage`` (internal stage id), ``timestamp`` (of the version),
``amount``, ``closedate``, ``createdate`` (deal properties; ``hs_createdate`` in
older portals) and ``archived`` / ``isDeleted`` (rows dropped, counted). HubSpot
writes ISO-8601 with ``Z`` (``2024-01-15T10:30:00.000Z``) in v3 and epoch
milliseconds in v1; both are read. Default stages are the default sales pipeline's
internal ids, in order: ``appointmentscheduled``, ``qualifiedtobuy``,
``presentationscheduled``, ``decisionmakerboughtin``, ``contractsent``, then
``closedwon`` and ``closedlost`` (HubSpot knowledge base, "Set up and customize
your deal pipelines and deal stages"). Custom pipelines use numeric stage ids:
pass ``stages=StageMap(...)``.

One row per deal (``shape="deals"``; a folder of such exports saved over time is
read as snapshots, see :mod:`forecast.data.snapshots`):

``"salesforce_opportunity"`` — the ``Opportunity`` object ("Represents an
opportunity, which is a sale or pending deal"), Salesforce Object Reference,
https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_objects_opportunity.htm
and the field reference (API names and labels),
https://developer.salesforce.com/docs/atlas.en-us.228.0.sfFieldRef.meta/sfFieldRef/salesforce_field_reference_Opportunity.htm :
``Id`` (label "Opportunity ID"), ``StageName`` ("Stage"), ``Amount``,
``CloseDate`` ("Close Date"; the expected close date, for closed deals usually
the actual one — orgs commonly set it on closing), ``CreatedDate`` ("Created Date", datetime), ``IsClosed``
("Closed"), ``IsWon`` ("Won"), ``IsDeleted`` ("Deleted"; rows dropped, counted),
and the descriptive ``ForecastCategoryName`` ("Forecast Category": Pipeline, Best
Case, Commit, Closed, Omitted), ``Type``, ``LeadSource`` ("Lead Source"), carried
as segment columns when present. API exports (Data Loader, SOQL) use the API names,
report exports the labels; both are recognised. ``IsClosed``/``IsWon`` classify
closed stages whatever their names (orgs rename and add them); open stages are
ordered by the standard sales process (:data:`SALESFORCE_STANDARD_STAGES`) unless
given. Report exports write dates in the user's locale: pass
``timestamp_formats=["%m/%d/%Y"]`` (or the locale's) if they are not ISO.

``"hubspot_deals"`` — the file of "Export" on the deals index page: one column per
property, headed by the property label, with stage labels as values. Labels from
HubSpot's knowledge base, "HubSpot's default deal properties",
https://knowledge.hubspot.com/crm-deals/hubspots-default-deal-properties :
"Record ID" (internal name ``hs_object_id``), "Deal Name" (``dealname``), "Deal
Stage" (``dealstage``), "Amount", "Close Date" (``closedate``; set by HubSpot when a
deal moves into a closed-won or closed-lost stage), "Create Date"
(``createdate``), "Pipeline" and "Deal Type" (carried as segments); both the title
case of older portals and the sentence case of newer ones ("Deal stage"), and the
internal names of an API export, are recognised. Default-pipeline stage labels
("Appointment Scheduled", ..., "Contract Sent", "Closed Won", "Closed Lost") are
classified by name; custom stages need ``stages=`` or ``open_stages=``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from forecast.data.stages import StageMap
from forecast.errors import ParameterError

__all__ = [
    "HUBSPOT",
    "HUBSPOT_DEALS",
    "HUBSPOT_DEFAULT_PIPELINE",
    "PRESETS",
    "SALESFORCE",
    "SALESFORCE_OPPORTUNITY",
    "SALESFORCE_STANDARD_STAGES",
    "Preset",
    "Shape",
    "get_preset",
]

#: Layout of the caller's table: a stage-change event log, one row per deal, or
#: periodic pipeline snapshots.
Shape = Literal["events", "deals", "snapshots"]


@dataclass(frozen=True)
class Preset:
    """How to read one vendor's export.

    Attributes
    ----------
    name : str
        Name accepted by ``read_deal_log(preset=...)``.
    shape : {"events", "deals", "snapshots"}
        Layout of the export.
    columns : mapping of str to tuple of str
        Canonical column (``deal_id``, ``timestamp``, ``stage``, ``amount``,
        ``close_date``, ``created_at``) -> the export's names for it, first present
        wins.
    optional : frozenset of str
        Canonical columns the export may lack (filled with nulls, noted).
    deleted_columns : tuple of str
        Boolean columns marking deleted rows; rows where the first present one is
        true are dropped and counted in ``ValidationReport.rows_filtered``.
    timestamp_formats : tuple of str
        Extra strptime formats (polars/chrono syntax) tried before ISO-8601.
    epoch_unit : {"s", "ms", "us"} or None
        Unit of numeric timestamps in the export.
    stages : StageMap or None
        Default stage map; ``None`` infers it from the stage names.
    source : str
        Where the column names are documented.
    closed_columns, won_columns : tuple of str
        Boolean columns telling whether the row's deal is closed and whether it is
        won (first present wins). When both are present and no ``StageMap`` is
        given, a stage name whose rows are all closed is classified by them (won,
        or lost), so custom closed stages need no mapping.
    segment_columns : tuple of str
        Descriptive columns (forecast category, type, lead source, ...) carried as
        segment columns whenever the export has them, for ``segment_by`` and later
        use as covariates.
    """

    name: str
    shape: Shape
    columns: Mapping[str, tuple[str, ...]]
    optional: frozenset[str] = frozenset()
    deleted_columns: tuple[str, ...] = ()
    timestamp_formats: tuple[str, ...] = ()
    epoch_unit: Literal["s", "ms", "us"] | None = None
    stages: StageMap | None = None
    source: str = ""
    closed_columns: tuple[str, ...] = ()
    won_columns: tuple[str, ...] = ()
    segment_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        cols = {str(k): tuple(v) for k, v in self.columns.items()}
        object.__setattr__(self, "columns", cols)
        object.__setattr__(self, "optional", frozenset(self.optional))
        for name in (
            "deleted_columns",
            "timestamp_formats",
            "closed_columns",
            "won_columns",
            "segment_columns",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def extra_columns(self) -> tuple[str, ...]:
        """Every non-canonical column the preset may read (flags and segments)."""
        return (
            *self.deleted_columns,
            *self.closed_columns,
            *self.won_columns,
            *self.segment_columns,
        )


SALESFORCE = Preset(
    name="salesforce",
    shape="events",
    columns={
        "deal_id": ("OpportunityId", "Opportunity ID", "Opportunity"),
        "timestamp": ("CreatedDate", "Created Date"),
        "stage": ("StageName", "Stage Name", "Stage"),
        "amount": ("Amount",),
        "close_date": ("CloseDate", "Close Date"),
        "created_at": (),  # not in OpportunityHistory: the first history row dates the deal
    },
    optional=frozenset({"close_date", "created_at"}),
    deleted_columns=("IsDeleted", "Deleted"),
    timestamp_formats=("%Y-%m-%dT%H:%M:%S%.f%z",),
    stages=None,
    source="https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/"
    "sforce_api_objects_opportunityhistory.htm",
)

#: HubSpot's default sales pipeline (internal stage ids), earliest first.
HUBSPOT_DEFAULT_PIPELINE = StageMap(
    open=(
        "appointmentscheduled",
        "qualifiedtobuy",
        "presentationscheduled",
        "decisionmakerboughtin",
        "contractsent",
    ),
    won=("closedwon",),
    lost=("closedlost",),
)

HUBSPOT = Preset(
    name="hubspot",
    shape="events",
    columns={
        "deal_id": ("hs_object_id", "dealId", "deal_id", "Record ID"),
        "timestamp": ("timestamp",),
        "stage": ("dealstage",),
        "amount": ("amount",),
        "close_date": ("closedate",),
        "created_at": ("createdate", "hs_createdate"),
    },
    optional=frozenset({"close_date", "created_at"}),
    deleted_columns=("archived", "isDeleted"),
    timestamp_formats=(),
    epoch_unit="ms",
    stages=HUBSPOT_DEFAULT_PIPELINE,
    source="https://developers.hubspot.com/docs/api/crm/deals",
)

#: Salesforce's standard sales process (the ``StageName`` picklist of a new org),
#: earliest first. Orgs edit it; stages no deal has reached yet stay in the map.
SALESFORCE_STANDARD_STAGES = StageMap(
    open=(
        "Prospecting",
        "Qualification",
        "Needs Analysis",
        "Value Proposition",
        "Id. Decision Makers",
        "Perception Analysis",
        "Proposal/Price Quote",
        "Negotiation/Review",
    ),
    won=("Closed Won",),
    lost=("Closed Lost",),
)

SALESFORCE_OPPORTUNITY = Preset(
    name="salesforce_opportunity",
    shape="deals",
    columns={
        "deal_id": ("Id", "Opportunity ID", "Opportunity Id"),
        "timestamp": (),  # one row per deal; a folder of exports is dated by file name
        "stage": ("StageName", "Stage"),
        "amount": ("Amount",),
        "close_date": ("CloseDate", "Close Date"),
        "created_at": ("CreatedDate", "Created Date"),
    },
    optional=frozenset(),
    deleted_columns=("IsDeleted", "Deleted"),
    timestamp_formats=("%Y-%m-%dT%H:%M:%S%.f%z",),
    stages=None,
    source="https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/"
    "sforce_api_objects_opportunity.htm",
    closed_columns=("IsClosed", "Closed"),
    won_columns=("IsWon", "Won"),
    segment_columns=(
        "ForecastCategoryName",
        "Forecast Category",
        "Type",
        "LeadSource",
        "Lead Source",
    ),
)

HUBSPOT_DEALS = Preset(
    name="hubspot_deals",
    shape="deals",
    columns={
        "deal_id": ("Record ID", "hs_object_id", "Deal ID", "dealId"),
        "timestamp": (),  # one row per deal; a folder of exports is dated by file name
        "stage": ("Deal Stage", "Deal stage", "dealstage"),
        "amount": ("Amount", "amount"),
        "close_date": ("Close Date", "Close date", "closedate"),
        "created_at": ("Create Date", "Create date", "createdate"),
    },
    optional=frozenset(),
    deleted_columns=(),
    timestamp_formats=(),
    epoch_unit="ms",
    stages=None,
    source="https://knowledge.hubspot.com/crm-deals/hubspots-default-deal-properties",
    segment_columns=("Pipeline", "pipeline", "Deal Type", "Deal type", "dealtype"),
)

#: Every named preset, by name.
PRESETS: dict[str, Preset] = {
    p.name: p for p in (SALESFORCE, HUBSPOT, SALESFORCE_OPPORTUNITY, HUBSPOT_DEALS)
}


def get_preset(preset: str | Preset) -> Preset:
    """Look up a preset by name (case-insensitive) or pass a :class:`Preset` through.

    Raises
    ------
    ParameterError
        For an unknown name, listing the known ones.
    """
    if isinstance(preset, Preset):
        return preset
    if isinstance(preset, str) and preset.lower() in PRESETS:
        return PRESETS[preset.lower()]
    raise ParameterError(
        f"The `preset` parameter of `read_deal_log` must be one of {sorted(PRESETS)} or a "
        f"`Preset`. Got {preset!r}."
    )
