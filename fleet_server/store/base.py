"""The storage seam of the fleet server: the `Store` Protocol and the values it trades in.

The API and the MQTT bridge talk to storage only through this Protocol, so a PostgreSQL backend
can replace the embedded SQLite one without touching them. Methods are synchronous; the API and
the bridge call them off the event loop (threadpool / `asyncio.to_thread`).

Contract every backend keeps:
- secrets (box credentials, enrollment tokens, admission request secrets) are
  `secrets.token_urlsafe(32)` and are stored only as SHA-256 hashes (`hash_secret`); the plain
  value is returned once, at creation (MQTT passwords are the broker's: never stored here);
- admission follows `fleet_server.store.admission` (re-key, pending requests, revocation);
- readings are keyed by (box_id, seq): re-delivered rows are counted as duplicates and not stored
  again, so at-least-once delivery becomes exactly-once storage; one batch is one transaction;
- readings go out across boxes in one total order, (ts, box_id, seq), by keyset pages
  (`readings_page`, fleet_server.readings_out), an index serving that order on every backend;
- seq tracking (issue 11, fleet_server.store.seq): that transaction also advances the box's seq
  state with the pure rules of `fleet_server.seq_tracking` and stores the gaps they find, each
  raised as a `seq_gap` alert (fleet_server.store.alerts), and the announced dropped ranges;
- a refused call changes nothing; backend failures raise `StoreError`;
- rollouts: every decision (assign a box at check-in, close an action, pause on an error
  threshold, cancel) is one transaction that reads the counters it decides on and applies the
  pure rules of `fleet_server.rollout.planner`; at most one open action per box; creating a
  rollout selects its targets in bulk (no per-box round trips). Times (`now`) are passed in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from core.box_health import BoxHealthReport
from core.reading import Reading
from fleet_server.readings_out import BoxReading, ReadingKey, ReadingsQuery
from fleet_server.seq_tracking import Gap, SeqReport
from fleet_server.store.access import AuditStore, UserStore
from fleet_server.store.admission import AdmissionStore
from fleet_server.store.alerts import AlertStore
from fleet_server.store.commands import CommandStore
from fleet_server.store.leases import LeaseStore
from fleet_server.store.quarantine import QuarantineStore
from fleet_server.store.seq import SeqStore

if TYPE_CHECKING:
    from fleet_server.errors import UnknownBox
    from fleet_server.rollout.model import (
        ActionView,
        CheckinOutcome,
        Inventory,
        ReportOutcome,
        RolloutSpec,
        RolloutView,
        StatusReport,
    )
    from fleet_server.rollout.windows import SitePolicy

__all__ = [
    "BOX_ID_PATTERN", "Box", "IngestResult", "ReadingsUpkeep", "Store", "check_box_id", "hash_secret", "new_secret",
]

#: A box id: 1-64 characters [A-Za-z0-9._-]. It appears in MQTT topics and URLs, so no '/', '+', '#'.
BOX_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_BOX_ID = re.compile(BOX_ID_PATTERN)


def check_box_id(box_id: object) -> str:
    """Return `box_id` if it is a well-formed box id, else raise ValueError saying why."""
    if not isinstance(box_id, str) or not _BOX_ID.fullmatch(box_id):
        raise ValueError(f"box_id must be 1-64 characters [A-Za-z0-9._-], got {box_id!r:.80}")
    return box_id


def new_secret() -> str:
    """A fresh credential or enrollment token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The only form in which a secret is stored: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Box:
    """An enrolled box as the fleet server knows it."""

    box_id: str
    hardware: str
    site: str
    agent_version: str
    tags: tuple[str, ...]
    enrolled_at: float
    last_seen: float | None = None   # server time of the last telemetry or status received
    max_seq: int = 0                 # highest reading seq stored for this box (0: none yet)
    online: bool = False             # last state the box reported on its status topic
    status_ts: float | None = None   # the box's timestamp of that status report

    def to_dict(self) -> dict[str, object]:
        return {
            "box_id": self.box_id, "hardware": self.hardware, "site": self.site,
            "agent_version": self.agent_version, "tags": list(self.tags),
            "enrolled_at": self.enrolled_at, "last_seen": self.last_seen,
            "max_seq": self.max_seq, "online": self.online, "status_ts": self.status_ts,
        }


@dataclass(frozen=True, slots=True)
class IngestResult:
    """Outcome of one stored batch.

    accepted / duplicates: rows newly stored / already present (accepted + duplicates == rows);
    max_seq: the box's highest stored seq; first_seq / last_seq: the lowest and highest seq of
    THIS batch (None for a batch without readings), all of it stored when this is returned;
    seq_gaps: the gaps this message revealed (each now an open `seq_gap` alert), `gaps` their
    number; dropped: (reason, seqs) of the dropped ranges this message announced for the first time.
    """

    accepted: int
    duplicates: int
    max_seq: int
    first_seq: int | None = None
    last_seq: int | None = None
    rows: int = 0
    seq_gaps: tuple[Gap, ...] = ()
    dropped: tuple[tuple[str, int], ...] = ()

    @property
    def gaps(self) -> int:
        """How many gaps (seq_gap alerts) this message raised."""
        return len(self.seq_gaps)


@runtime_checkable
class Store(AdmissionStore, QuarantineStore, UserStore, AuditStore, AlertStore, SeqStore, LeaseStore, CommandStore,
            Protocol):
    """Fleet storage. Every method is atomic; every refusal leaves the store unchanged.

    Enrolment and admission come from `AdmissionStore` (fleet_server.store.admission), the
    quarantine methods from `QuarantineStore` (fleet_server.store.quarantine); API users and the
    audit log from `fleet_server.store.access`; alerts from `fleet_server.store.alerts`, the seq
    tracking read side from `fleet_server.store.seq`, the leases of the periodic jobs from
    `fleet_server.store.leases` (the Protocols included here)."""

    #: True when other server processes may change this store (PostgreSQL replicas): callers must
    #: then not trust what they remember of it beyond their refresh period (RolloutEngine).
    shared: bool

    def create_enrollment_token(self, ttl_s: float, max_uses: int, note: str) -> str:
        """Create a token valid for `ttl_s` seconds and `max_uses` enrollments; return it (once)."""
        ...

    def box_for_credential(self, credential: str) -> Box | None:
        """The box this credential belongs to, or None."""
        ...

    def credential_index(self, limit: int) -> list[tuple[str, str, str]] | None:
        """(credential hash, box id, site) of every enrolled box, in one read; None when there
        are more than `limit` boxes (the caller then looks credentials up one at a time)."""
        ...

    def ingest(self, box_id: str, rows: Sequence[Reading], report: SeqReport | None = None) -> IngestResult:
        """Store a batch of readings (each with a seq) in one transaction, advancing the box's seq
        tracking with them and `report` (the message's low / base / dropped); raise `UnknownBox`."""
        ...

    def ingest_many(
        self, batches: Sequence[tuple[str, Sequence[Reading], SeqReport | None]],
    ) -> list[IngestResult | UnknownBox]:
        """`ingest` for several (box_id, rows, report) batches with one commit: per batch its
        result, or UnknownBox (that batch alone is not stored)."""
        ...

    def readings(
        self, box_id: str, after_seq: int = 0, limit: int = 1000,
        device: str | None = None, point: str | None = None,
    ) -> list[Reading]:
        """Readings with seq > after_seq in seq order, at most `limit`; raise `UnknownBox`."""
        ...

    def readings_page(self, query: ReadingsQuery) -> tuple[list[BoxReading], ReadingKey | None]:
        """Readings of every box matching `query`, in (ts, box_id, seq) order, strictly after
        `query.after`, at most `query.limit`; and the key to continue after: None when no matching
        reading follows this page (as stored when the page was read). Raises `UnknownBox` when
        `query.box_id` names no enrolled box."""
        ...

    def list_boxes(self) -> list[Box]:
        """Every enrolled box, ordered by box id."""
        ...

    def count_boxes(self) -> int:
        """How many boxes are enrolled."""
        ...

    def get_box(self, box_id: str) -> Box | None:
        """One box, or None."""
        ...

    def set_box_status(self, box_id: str, online: bool, ts: float) -> None:
        """Record the box's reported online state and its timestamp `ts`. Raises `UnknownBox`.

        Reports are applied in arrival order, NOT by `ts`: the broker keeps per-topic order, and
        an MQTT last will ("offline") carries the timestamp of the connect, older than the
        "online" report that followed it, so ordering by `ts` would keep dead boxes online."""
        ...

    def save_box_health(self, reports: Sequence[tuple[str, float, BoxHealthReport]]) -> None:
        """Keep each box's latest health report (box id, received at, report); a newer one wins."""
        ...

    def box_health(self, since: float) -> list[tuple[str, float, BoxHealthReport]]:
        """Every box's latest health report received at or after `since`, by box id."""
        ...

    def credential_generation(self) -> int:
        """A number that changes whenever an existing credential stops working (re-key, admission
        or revocation). Callers may cache credential -> box lookups while it stays the same."""
        ...

    def provision_boxes(
        self, boxes: Sequence[tuple[str, str, str, Sequence[str], Inventory | None]]
    ) -> list[str]:
        """Enroll many new boxes (box_id, hardware, site, tags, inventory) in one transaction;
        return their credentials in order. ValueError (nothing stored) if any id is taken."""
        ...

    # -- rollouts ----------------------------------------------------------------------------

    def save_inventory(self, box_id: str, inventory: Inventory, now: float) -> None:
        """Replace what the box reports it runs (target filters read it). Raises `UnknownBox`."""
        ...

    def put_site_policy(self, policy: SitePolicy, now: float) -> None:
        """Create or replace a site's maintenance policy."""
        ...

    def site_policies(self) -> list[SitePolicy]:
        """Every site's maintenance policy."""
        ...

    def create_rollout(self, spec: RolloutSpec, rollout_id: str, now: float) -> RolloutView:
        """Select the target boxes (enrolled, inventory reported, hardware the target supports,
        matching `spec.filter`, not already at the version) and create the rollout, running.
        PayloadError `empty_target_set` (nothing stored) when no box matches."""
        ...

    def get_rollout(self, rollout_id: str) -> RolloutView:
        """One rollout with its wave counters; raises `UnknownRollout`."""
        ...

    def list_rollouts(self, active_only: bool = False) -> list[RolloutView]:
        """Rollouts, oldest first (active_only: running or paused)."""
        ...

    def rollout_state_counts(self, rollout_id: str) -> dict[int | None, dict[str, int]]:
        """{wave (None: not assigned yet): {state: count}}; raises `UnknownRollout`."""
        ...

    def rollout_actions(self, rollout_id: str, state: str | None = None, after_box: str = "",
                        limit: int = 100) -> list[ActionView]:
        """A page of the rollout's boxes, by box id after `after_box`, optionally in one state."""
        ...

    def pending_boxes(self, rollout_id: str) -> list[str]:
        """Target boxes of the rollout not assigned yet."""
        ...

    def open_actions(self) -> list[ActionView]:
        """Every open action (one per box at most)."""
        ...

    def command_rollout(self, rollout_id: str, command: str, now: float) -> tuple[RolloutView, list[str]]:
        """pause | resume | cancel. Resume accepts the errors so far (thresholds count newer ones);
        cancel closes open actions as canceled and drops unassigned targets. Returns the rollout and
        the boxes whose action was closed. `RolloutConflict` when the status does not allow it."""
        ...

    def checkin(self, box_id: str, now: float, window_open: Callable[[str, str], bool]) -> CheckinOutcome:
        """Close the box's action if past its deadline; return its open action, or assign one
        from the oldest running rollout that targets it and may take it now.
        `window_open(site, kind)` says whether the box's site is inside a maintenance window."""
        ...

    def report_action(self, box_id: str, action_id: str, report: StatusReport, now: float) -> ReportOutcome:
        """Apply a box's status report (idempotent). A final state closes the action, updates the
        wave counters and pauses the rollout when an error threshold is breached. Raises
        `UnknownAction`, or `ActionClosed` for an action already closed in another final state."""
        ...

    def expire_actions(self, now: float) -> tuple[list[str], list[RolloutView]]:
        """Close open actions past their deadline as failure (reason_code `timeout`)."""
        ...

    def close(self) -> None:
        """Release the backend's resources; later calls raise `StoreError`."""
        ...


@runtime_checkable
class ReadingsUpkeep(Protocol):
    """What a backend keeping readings in daily partitions (PostgreSQL: `PgStore`) also offers; the
    app runs it periodically as the leased job "readings-upkeep". SQLite keeps every reading (it
    has no `upkeep`; the retention settings do not apply to it)."""

    def upkeep(self, now: float, retention_days: Mapping[str, int]) -> tuple[list[str], list[str]]:
        """Make the coming days' partitions and drop those older than each class's retention
        ({class: days}); return (created, dropped) partition names."""
        ...
