"""Rollout storage for `SqliteStore` and `PgStore` (a mixin: the store's connection, lock and error boundary).

Every decision runs inside ONE write transaction of the single connection, on counters read in
that transaction: assigning a box (check-in), closing an action (report, timeout, cancel) and
pausing on a breached error threshold are each atomic, so no box is ever assigned after the
report that breached a threshold committed. The rules themselves are `rollout.planner`'s pure
functions; this module only reads, calls them and writes. Wave counters are kept in
`rollout_waves` (updated in the same transaction as the action), so a decision costs a few
indexed rows whatever the rollout's size; creating a rollout is one INSERT ... SELECT.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from fleet_server.errors import PayloadError, UnknownBox
from fleet_server.rollout import planner, transitions
from fleet_server.rollout.errors import ActionClosed, UnknownAction, UnknownRollout
from fleet_server.rollout.model import (
    ActionView,
    CheckinOutcome,
    Inventory,
    ReportOutcome,
    RolloutSpec,
    RolloutView,
    StatusReport,
    WaveView,
)
from fleet_server.rollout.windows import SitePolicy
from fleet_server.store.sql import SqlConn, SqlDialect

__all__ = ["RolloutTables", "split_action_id"]

_ROLLOUT_COLS = (
    "rollout_id, name, kind, target_name, version, component, status, total, current_wave, timeout_s,"
    " rate_per_min, respect_windows, min_finished, created_at, updated_at, rev, pause_reason, tokens,"
    " tokens_at, filter, hardware"
)
_WAVE_COLS = "wave, capacity, success_pct, error_pct, assigned, succeeded, failed, rejected, canceled, errors_acked"
_ACTION_COLS = (
    "rb.rollout_id, rb.box_id, rb.wave, rb.state, r.kind, r.target_name, r.version, r.timeout_s,"
    " rb.reason, rb.reason_code, rb.assigned_at, rb.updated_at, rb.deadline, r.component"
)
_COUNTER = {"success": "succeeded", "failure": "failed", "rejected": "rejected", "canceled": "canceled"}
WindowOpen = Callable[[str, str], bool]   # (site, kind) -> may a box of this site be assigned now


def split_action_id(action_id: str) -> tuple[str, str]:
    """An action id is '<rollout_id>.<box_id>' (rollout ids contain no dot)."""
    rollout_id, _, box_id = action_id.partition(".")
    return rollout_id, box_id


class RolloutTables:
    """Rollout methods of the `Store` Protocol; mixed into `SqliteStore` and `PgStore`."""

    _conn: Callable[..., AbstractContextManager[SqlConn]]
    _sql: SqlDialect

    # -- inventory and sites -----------------------------------------------------------------

    def save_inventory(self, box_id: str, inventory: Inventory, now: float) -> None:
        with self._conn(write=True) as conn:
            if not conn.execute("UPDATE boxes SET agent_version = ? WHERE box_id = ?",
                                (inventory.agent_version, box_id)).rowcount:
                raise UnknownBox(box_id)
            conn.execute(
                "INSERT INTO box_inventory (box_id, hardware, agent_version, models, firmware, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (box_id) DO UPDATE SET hardware = excluded.hardware,"
                " agent_version = excluded.agent_version, models = excluded.models, firmware = excluded.firmware,"
                " updated_at = excluded.updated_at",
                (box_id, inventory.hardware, inventory.agent_version, json.dumps(dict(inventory.models)),
                 json.dumps(dict(inventory.firmware)), now),
            )
            conn.execute("DELETE FROM box_versions WHERE box_id = ?", (box_id,))
            conn.executemany("INSERT INTO box_versions (box_id, kind, component, version) VALUES (?, ?, ?, ?)",
                             [(box_id, *row) for row in inventory.versions()])

    def put_site_policy(self, policy: SitePolicy, now: float) -> None:
        with self._conn(write=True) as conn:
            conn.execute("INSERT INTO site_policies (site, policy, updated_at) VALUES (?, ?, ?)"
                         " ON CONFLICT (site) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
                         (policy.site, json.dumps(policy.to_json()), now))

    def site_policies(self) -> list[SitePolicy]:
        with self._conn() as conn:
            rows = conn.execute("SELECT site, policy FROM site_policies ORDER BY site").fetchall()
        return [SitePolicy.from_json(site, {k: v for k, v in json.loads(p).items() if k != "site"})
                for site, p in rows]

    # -- rollouts ----------------------------------------------------------------------------

    def create_rollout(self, spec: RolloutSpec, rollout_id: str, now: float) -> RolloutView:
        hardware = list(spec.hardware)
        if spec.filter.hardware:
            hardware = [h for h in hardware if h in spec.filter.hardware]
            if not hardware:
                raise PayloadError("empty_target_set", "the filter's hardware is not among the hardware the "
                                   f"signed target supports ({', '.join(spec.hardware)})", field="filter.hardware")
        sql = ["INSERT INTO rollout_boxes (rollout_id, box_id, state, open) SELECT ?, b.box_id, 'pending', 0"
               " FROM boxes b JOIN box_inventory i ON i.box_id = b.box_id"
               " LEFT JOIN box_versions v ON v.box_id = b.box_id AND v.kind = ? AND v.component = ?"
               f" WHERE i.hardware IN (SELECT value FROM {self._sql.json_values('?')})"
               " AND (v.version IS NULL OR v.version != ?)"]
        args: list[Any] = [rollout_id, spec.kind, spec.component, json.dumps(hardware), spec.version]
        f = spec.filter
        for values, clause in ((f.sites, "b.site"), (f.current_versions, "v.version"), (f.box_ids, "b.box_id")):
            if values:
                sql.append(f"AND {clause} IN (SELECT value FROM {self._sql.json_values('?')})")
                args.append(json.dumps(list(values)))
        if f.tags:
            sql.append(f"AND (SELECT count(DISTINCT value) FROM {self._sql.json_values('b.tags')}"
                       f" WHERE value IN (SELECT value FROM {self._sql.json_values('?')})) = ?")
            args += [json.dumps(sorted(set(f.tags))), len(set(f.tags))]
        with self._conn(write=True, lock="rollouts") as conn:
            total = conn.execute(" ".join(sql), args).rowcount
            if total == 0:
                raise PayloadError("empty_target_set", "no enrolled box matches the filter (with inventory "
                                   f"reported, hardware in {hardware}, not already at {spec.version})", field="filter")
            waves = spec.capacities(total)
            conn.executemany(
                "INSERT INTO rollout_waves (rollout_id, wave, capacity, success_pct, error_pct) VALUES (?, ?, ?, ?, ?)",
                [(rollout_id, no, cap, w.success_pct, w.error_pct) for no, (w, cap) in enumerate(waves, 1)],
            )
            tokens = planner.burst(spec.rate_per_min) if spec.rate_per_min else 0.0
            conn.execute(
                f"INSERT INTO rollouts ({_ROLLOUT_COLS}) VALUES"
                " (?, ?, ?, ?, ?, ?, 'running', ?, 1, ?, ?, ?, ?, ?, ?, 1, NULL, ?, ?, ?, ?)",
                (rollout_id, spec.name, spec.kind, spec.target_name, spec.version, spec.component, total,
                 spec.timeout_s, spec.rate_per_min, int(spec.respect_windows), spec.min_finished, now, now,
                 tokens, now, json.dumps(spec.filter.to_dict()), json.dumps(hardware)),
            )
            return self._rollout(conn, rollout_id)

    def get_rollout(self, rollout_id: str) -> RolloutView:
        with self._conn() as conn:
            return self._rollout(conn, rollout_id)

    def list_rollouts(self, active_only: bool = False) -> list[RolloutView]:
        where = " WHERE status IN ('running', 'paused')" if active_only else ""
        with self._conn() as conn:
            ids = [r[0] for r in conn.execute(
                f"SELECT rollout_id FROM rollouts{where} ORDER BY created_at, {self._sql.row_order('rollouts')}")]
            return [self._rollout(conn, rid) for rid in ids]

    def rollout_state_counts(self, rollout_id: str) -> dict[int | None, dict[str, int]]:
        counts: dict[int | None, dict[str, int]] = {}
        with self._conn() as conn:
            self._rollout(conn, rollout_id)
            for wave, state, n in conn.execute(
                "SELECT wave, state, count(*) FROM rollout_boxes WHERE rollout_id = ? GROUP BY wave, state",
                (rollout_id,),
            ):
                counts.setdefault(wave, {})[state] = n
        return counts

    def rollout_actions(self, rollout_id: str, state: str | None = None, after_box: str = "",
                        limit: int = 100) -> list[ActionView]:
        sql = f"SELECT {_ACTION_COLS} FROM rollout_boxes rb JOIN rollouts r USING (rollout_id)" \
              " WHERE rb.rollout_id = ? AND rb.box_id > ?"
        args: list[Any] = [rollout_id, after_box]
        if state is not None:
            sql += " AND rb.state = ?"
            args.append(state)
        with self._conn() as conn:
            self._rollout(conn, rollout_id)
            rows = conn.execute(sql + " ORDER BY rb.box_id LIMIT ?", [*args, limit]).fetchall()
        return [_action(row) for row in rows]

    def pending_boxes(self, rollout_id: str) -> list[str]:
        with self._conn() as conn:
            return [r[0] for r in conn.execute(
                "SELECT box_id FROM rollout_boxes WHERE rollout_id = ? AND state = 'pending'", (rollout_id,))]

    def open_actions(self) -> list[ActionView]:
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {_ACTION_COLS} FROM rollout_boxes rb JOIN rollouts r USING (rollout_id)"
                                " WHERE rb.open = 1").fetchall()
        return [_action(row) for row in rows]

    def command_rollout(self, rollout_id: str, command: str, now: float) -> tuple[RolloutView, list[str]]:
        """pause / resume / cancel; returns the rollout and the boxes whose open action was closed."""
        closed: list[str] = []
        with self._conn(write=True, lock="rollouts") as conn:
            rollout = self._rollout(conn, rollout_id)
            status = transitions.command_status(rollout.status, command, rollout_id)  # or RolloutConflict
            if command == "pause":
                self._set_status(conn, rollout_id, status, "paused by admin", now)
            elif command == "resume":  # the admin has seen the errors so far: thresholds count newer ones
                conn.execute("UPDATE rollout_waves SET errors_acked = failed + rejected WHERE rollout_id = ?",
                             (rollout_id,))
                self._set_status(conn, rollout_id, status, None, now)
            else:
                rows = conn.execute(
                    "UPDATE rollout_boxes SET state = 'canceled', open = 0, updated_at = ?, reason_code ="
                    " 'rollout_canceled', reason = 'the rollout was canceled' WHERE rollout_id = ? AND open = 1"
                    " RETURNING box_id, wave", (now, rollout_id)).fetchall()
                for box_id, wave in rows:
                    closed.append(box_id)
                    conn.execute("UPDATE rollout_waves SET canceled = canceled + 1 WHERE rollout_id = ? AND wave = ?",
                                 (rollout_id, wave))
                conn.execute("UPDATE rollout_boxes SET state = 'canceled', updated_at = ?, reason_code ="
                             " 'rollout_canceled' WHERE rollout_id = ? AND state = 'pending'", (now, rollout_id))
                self._set_status(conn, rollout_id, status, "canceled by admin", now)
            return self._rollout(conn, rollout_id), closed

    # -- the box's side ------------------------------------------------------------------------

    def checkin(self, box_id: str, now: float, window_open: WindowOpen) -> CheckinOutcome:
        """The box's open action; if it has none, assign one from the oldest running rollout
        that targets it and may take it now (wave room or next wave open, rate, window).

        Most check-ins find nothing to do: a read first, and only a box with an open action or a
        pending target in a running rollout takes the rollouts lock (serialized decisions)."""
        with self._conn() as conn:
            involved = conn.execute(
                "SELECT 1 FROM rollout_boxes rb JOIN rollouts r USING (rollout_id) WHERE rb.box_id = ?"
                " AND (rb.open = 1 OR (rb.state = 'pending' AND r.status = 'running')) LIMIT 1",
                (box_id,)).fetchone()
        if involved is None:
            return CheckinOutcome(None, ())
        with self._conn(write=True, lock="rollouts") as conn:
            touched = self._expire(conn, now, box_id)
            row = conn.execute(f"SELECT {_ACTION_COLS} FROM rollout_boxes rb JOIN rollouts r USING (rollout_id)"
                               " WHERE rb.box_id = ? AND rb.open = 1", (box_id,)).fetchone()
            if row is not None:
                return CheckinOutcome(_action(row), tuple(self._rollout(conn, r) for r in touched))
            site_row = conn.execute("SELECT site FROM boxes WHERE box_id = ?", (box_id,)).fetchone()
            candidates = [r[0] for r in conn.execute(
                "SELECT rb.rollout_id FROM rollout_boxes rb JOIN rollouts r USING (rollout_id)"
                " WHERE rb.box_id = ? AND rb.state = 'pending' AND r.status = 'running'"
                f" ORDER BY r.created_at, {self._sql.row_order('r')}", (box_id,))]
            seen: list[RolloutView] = []
            for rollout_id in candidates:
                rollout = self._rollout(conn, rollout_id)
                if rollout.respect_windows and not window_open(site_row[0] if site_row else "", rollout.kind):
                    seen.append(rollout)
                    continue
                pick = planner.pick_wave(rollout, now)
                if pick.wave is None:
                    if pick.reason == "error_threshold":  # defensive: a breach always pauses
                        self._set_status(conn, rollout_id, "paused", transitions.breach_reason(rollout), now)
                        rollout = self._rollout(conn, rollout_id)
                    seen.append(rollout)
                    continue
                conn.execute(
                    "UPDATE rollout_boxes SET state = 'assigned', wave = ?, assigned_at = ?, updated_at = ?,"
                    " deadline = ?, open = 1 WHERE rollout_id = ? AND box_id = ?",
                    (pick.wave, now, now, now + rollout.timeout_s, rollout_id, box_id))
                conn.execute("UPDATE rollout_waves SET assigned = assigned + 1 WHERE rollout_id = ? AND wave = ?",
                             (rollout_id, pick.wave))
                conn.execute("UPDATE rollouts SET current_wave = ?, tokens = ?, tokens_at = ?, updated_at = ?,"
                             " rev = rev + 1 WHERE rollout_id = ?",
                             (pick.current_wave, 0.0 if rollout.rate_per_min is None else pick.tokens, now, now,
                              rollout_id))
                action = _action(conn.execute(
                    f"SELECT {_ACTION_COLS} FROM rollout_boxes rb JOIN rollouts r USING (rollout_id)"
                    " WHERE rb.rollout_id = ? AND rb.box_id = ?", (rollout_id, box_id)).fetchone())
                seen.append(self._rollout(conn, rollout_id))
                return CheckinOutcome(action, tuple(seen), assigned=True)
            return CheckinOutcome(None, tuple(seen) + tuple(self._rollout(conn, r) for r in touched))

    def report_action(self, box_id: str, action_id: str, report: StatusReport, now: float) -> ReportOutcome:
        rollout_id, action_box = split_action_id(action_id)
        closed_now: ActionClosed | None = None
        with self._conn(write=True, lock="rollouts") as conn:
            row = conn.execute(f"SELECT {_ACTION_COLS} FROM rollout_boxes rb JOIN rollouts r USING (rollout_id)"
                               " WHERE rb.rollout_id = ? AND rb.box_id = ?", (rollout_id, box_id)).fetchone()
            if action_box != box_id or row is None or row[3] == "pending":
                raise UnknownAction(box_id, action_id)
            action = _action(row)
            step = transitions.on_report(action, report, now)
            if step.kind == "repeat":
                return ReportOutcome(action, None, changed=False)
            if step.kind == "expire_then_refuse":
                self._expire(conn, now, box_id)      # too late: closed as a timeout, then refused below
                closed_now = ActionClosed(action_id, "failure", "timeout")
            elif step.kind == "refuse":
                closed_now = ActionClosed(action_id, action.state, action.reason_code)
            else:
                final = step.kind == "close"
                conn.execute(
                    "UPDATE rollout_boxes SET state = ?, reason = ?, reason_code = ?, detail = ?, updated_at = ?,"
                    " open = ? WHERE rollout_id = ? AND box_id = ?",
                    (report.state, report.reason, report.reason_code,
                     None if report.detail is None else json.dumps(report.detail), now, 0 if final else 1,
                     rollout_id, box_id))
                action = replace(action, state=report.state, reason=report.reason, reason_code=report.reason_code,
                                 updated_at=now)
                if not final:
                    return ReportOutcome(action, None, changed=True)
                self._count_final(conn, rollout_id, action.wave, report.state, now)
                if report.state == "success":
                    conn.execute("INSERT INTO box_versions (box_id, kind, component, version)"
                                 " SELECT ?, kind, component, version FROM rollouts WHERE rollout_id = ?"
                                 " ON CONFLICT (box_id, kind, component) DO UPDATE SET version = excluded.version",
                                 (box_id, rollout_id))
                    if action.kind == "agent":
                        conn.execute("UPDATE boxes SET agent_version = ? WHERE box_id = ?", (action.version, box_id))
                return ReportOutcome(action, self._rollout(conn, rollout_id), changed=True)
        raise closed_now   # after the commit: a timeout closed just now stays closed

    def expire_actions(self, now: float) -> tuple[list[str], list[RolloutView]]:
        """Close every open action past its deadline as failure/timeout; (boxes, rollouts touched)."""
        with self._conn(write=True, lock="rollouts") as conn:
            boxes: list[str] = []
            touched = self._expire(conn, now, None, boxes)
            return boxes, [self._rollout(conn, r) for r in touched]

    # -- internals (inside a transaction) ------------------------------------------------------

    def _expire(self, conn: SqlConn, now: float, box_id: str | None,
                boxes: list[str] | None = None) -> set[str]:
        where = "open = 1 AND deadline <= ?" + (" AND box_id = ?" if box_id is not None else "")
        rows = conn.execute(
            "UPDATE rollout_boxes SET state = 'failure', open = 0, updated_at = ?, reason_code = 'timeout',"
            f" reason = ? WHERE {where} RETURNING rollout_id, box_id, wave",
            (now, transitions.TIMEOUT_REASON, now) + ((box_id,) if box_id is not None else ())).fetchall()
        touched: set[str] = set()
        for rollout_id, expired_box, wave in rows:
            self._count_final(conn, rollout_id, wave, "failure", now)
            touched.add(rollout_id)
            if boxes is not None:
                boxes.append(expired_box)
        return touched

    def _count_final(self, conn: SqlConn, rollout_id: str, wave: int | None, state: str,
                     now: float) -> None:
        column = _COUNTER[state]
        conn.execute(f"UPDATE rollout_waves SET {column} = {column} + 1 WHERE rollout_id = ? AND wave = ?",
                     (rollout_id, wave))
        # any final report can breach: a success raises `finished` past min_finished
        change = transitions.after_final(self._rollout(conn, rollout_id))
        if change is not None:
            self._set_status(conn, rollout_id, change[0], change[1], now)
        else:
            conn.execute("UPDATE rollouts SET rev = rev + 1, updated_at = ? WHERE rollout_id = ?", (now, rollout_id))

    def _set_status(self, conn: SqlConn, rollout_id: str, status: str, reason: str | None,
                    now: float) -> None:
        conn.execute("UPDATE rollouts SET status = ?, pause_reason = ?, updated_at = ?, rev = rev + 1"
                     " WHERE rollout_id = ?", (status, reason, now, rollout_id))

    def _rollout(self, conn: SqlConn, rollout_id: str) -> RolloutView:
        row = conn.execute(f"SELECT {_ROLLOUT_COLS} FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone()
        if row is None:
            raise UnknownRollout(rollout_id)
        waves = tuple(WaveView(*w) for w in conn.execute(
            f"SELECT {_WAVE_COLS} FROM rollout_waves WHERE rollout_id = ? ORDER BY wave", (rollout_id,)))
        (rid, name, kind, target, version, component, status, total, current, timeout_s, rate, windows,
         min_finished, created, updated, rev, reason, tokens, tokens_at, filt, hardware) = row
        return RolloutView(rid, name, kind, target, version, component, status, total, current, waves, timeout_s,
                           rate, bool(windows), min_finished, created, updated, rev, reason, tokens, tokens_at,
                           json.loads(filt), tuple(json.loads(hardware)))


def _action(row: tuple[Any, ...]) -> ActionView:
    (rollout_id, box_id, wave, state, kind, target, version, timeout_s, reason, code, assigned, updated,
     deadline, component) = row
    return ActionView(f"{rollout_id}.{box_id}", rollout_id, box_id, wave, state, kind, target, version, timeout_s,
                      reason, code, assigned, updated, deadline, component)
