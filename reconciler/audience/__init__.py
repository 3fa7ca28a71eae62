"""Audience: the user & event store, segment rules compiled to SQL, reach, limits and the safety gate.

Typical use by a scheduler run:

    with open_audience_store(config.audience_url) as store:
        selection = select_audience(store, campaign, state, clock.now(), seed=run.seed)
        if selection.blocked: alert(...)            # safety limit: record why, do not send
        for batch in selection.members(): ...       # stream of Member batches
"""

from .compiler import Compiler, Rule
from .ingest import IngestReport, RowError, ingest_file, ingest_stream
from .reach import (
    AppliedLimit,
    LiveAllowance,
    SafetyVerdict,
    Selection,
    UnknownSegmentError,
    campaign_rules,
    live_allowance,
    safety_check,
    safety_limit,
    select_audience,
    user_in_audience,
)
from .records import EventRecord, Member, RecordError, UserRecord, parse_event, parse_user
from .semantics import PredicateError, event_matches, in_reach_sample, predicate_holds
from .store import (
    AudienceQuery,
    AudienceStore,
    AudienceStoreError,
    ReachSample,
    StoreStats,
    open_audience_store,
)

__all__ = [
    "AppliedLimit",
    "AudienceQuery",
    "AudienceStore",
    "AudienceStoreError",
    "Compiler",
    "EventRecord",
    "IngestReport",
    "LiveAllowance",
    "Member",
    "PredicateError",
    "ReachSample",
    "RecordError",
    "RowError",
    "Rule",
    "SafetyVerdict",
    "Selection",
    "StoreStats",
    "UnknownSegmentError",
    "UserRecord",
    "campaign_rules",
    "event_matches",
    "in_reach_sample",
    "ingest_file",
    "ingest_stream",
    "live_allowance",
    "open_audience_store",
    "parse_event",
    "parse_user",
    "predicate_holds",
    "safety_check",
    "safety_limit",
    "select_audience",
    "user_in_audience",
]
