"""Rollouts and site maintenance windows. Reading needs the viewer role, creating and commanding
rollouts the operator role, setting a site's maintenance windows the admin role.

    POST /api/v1/rollouts                      create (below) -> 201 rollout
    GET  /api/v1/rollouts[?active=true]        -> {"rollouts": [rollout, ...]}
    GET  /api/v1/rollouts/{id}                 -> rollout + {"counts": {wave: {state: n}}}
    POST /api/v1/rollouts/{id}/pause|resume|cancel   -> rollout; 409 when the status forbids it
    GET  /api/v1/rollouts/{id}/actions?state=&after=&limit=   -> {"actions": [...], "next_after"}
    PUT  /api/v1/sites/{site}/maintenance      {"timezone", "windows", "blackouts"} -> policy
    GET  /api/v1/sites                         -> {"sites": [policy, ...]}

Create body:
    {"target_name": "agent-0.2.0.tar", "kind": "agent", "version": null, "component": "",
     "name": "", "filter": {"tags": [], "sites": [], "hardware": [], "current_versions": [], "box_ids": []},
     "waves": ["1", "1%", "10%", "50%", "100%"]  or  [{"size": "1%", "success_pct": 95, "error_pct": 5}, ...],
     "success_pct": 90, "error_pct": 10, "min_finished": 10, "timeout_s": 3600,
     "rate_per_min": null, "respect_windows": true}
The target must be published and signed in the server's update repository; its signed version
and hardware list are used (a box of other hardware is never targeted).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fleet_server.api.deps import require_admin, require_operator, require_viewer
from fleet_server.api.fields import CleanStr
from fleet_server.errors import PayloadError
from fleet_server.rollout.engine import RolloutEngine
from fleet_server.rollout.model import (
    BOX_STATES,
    KINDS,
    MIN_FINISHED,
    RATE_PER_MIN_MAX,
    TIMEOUT_S,
    TargetFilter,
    WaveSpec,
)
from fleet_server.rollout.windows import SitePolicy
from fleet_server.store.base import BOX_ID_PATTERN

__all__ = ["router", "sites_router"]

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"], dependencies=[Depends(require_viewer)])
sites_router = APIRouter(prefix="/api/v1/sites", tags=["rollouts"], dependencies=[Depends(require_viewer)])

Name = Annotated[CleanStr, Field(min_length=1, max_length=128)]
WaveSize = Annotated[CleanStr, Field(min_length=1, max_length=16)]
RolloutId = Annotated[str, Path(pattern=r"^r-[0-9a-f]{1,32}$")]
_STATES = ("pending", "assigned", *BOX_STATES)


class FilterBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    tags: list[Name] = Field(default_factory=list, max_length=32)
    sites: list[Name] = Field(default_factory=list, max_length=1000)
    hardware: list[Name] = Field(default_factory=list, max_length=100)
    current_versions: list[Annotated[CleanStr, Field(min_length=1, max_length=64)]] = Field(default_factory=list,
                                                                                       max_length=100)
    box_ids: list[Annotated[str, Field(pattern=BOX_ID_PATTERN)]] = Field(default_factory=list, max_length=100_000)


class WaveBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    size: WaveSize
    success_pct: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    error_pct: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)


def _default_waves() -> list[WaveSize | WaveBody]:
    return ["1", "1%", "10%", "50%", "100%"]


class CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    target_name: CleanStr = Field(min_length=1, max_length=256)
    kind: str = Field(pattern="^(" + "|".join(KINDS) + ")$")
    version: CleanStr | None = Field(None, max_length=64)
    component: CleanStr = Field("", max_length=128)
    name: CleanStr = Field("", max_length=200)
    filter: FilterBody = Field(default_factory=FilterBody)
    waves: list[WaveSize | WaveBody] = Field(default_factory=_default_waves, min_length=1, max_length=20)
    success_pct: float = Field(90.0, ge=0, le=100, allow_inf_nan=False)
    error_pct: float = Field(10.0, ge=0, le=100, allow_inf_nan=False)
    min_finished: int = Field(10, ge=MIN_FINISHED[0], le=MIN_FINISHED[1])
    timeout_s: int = Field(3600, ge=TIMEOUT_S[0], le=TIMEOUT_S[1])
    rate_per_min: float | None = Field(None, gt=0, le=RATE_PER_MIN_MAX, allow_inf_nan=False)
    respect_windows: bool = True

    def wave_specs(self) -> tuple[WaveSpec, ...]:
        """The waves as WaveSpecs (already validated by the model; WaveSpec raises PayloadError for
        a size that is not 'N' or 'P%'). Never builds a model here: a ValidationError raised after
        FastAPI's own validation would be a 500."""
        out = []
        for wave in self.waves:
            size, success, error = (wave, None, None) if isinstance(wave, str) else (
                wave.size, wave.success_pct, wave.error_pct)
            out.append(WaveSpec(size, self.success_pct if success is None else success,
                                self.error_pct if error is None else error))
        return tuple(out)


def _engine(request: Request) -> RolloutEngine:
    engine: RolloutEngine = request.app.state.rollouts
    return engine


@router.post("", status_code=201, dependencies=[Depends(require_operator)])
async def create_rollout(body: CreateBody, request: Request) -> dict[str, Any]:
    f = body.filter
    view = await _engine(request).create(
        name=body.name, kind=body.kind, target_name=body.target_name, version=body.version,
        component=body.component, waves=body.wave_specs(), timeout_s=body.timeout_s,
        filter=TargetFilter(tuple(f.tags), tuple(f.sites), tuple(f.hardware), tuple(f.current_versions),
                            tuple(f.box_ids)),
        rate_per_min=body.rate_per_min, respect_windows=body.respect_windows, min_finished=body.min_finished,
    )
    return view.to_dict()


@router.get("")
async def list_rollouts(request: Request, active: bool = False) -> dict[str, Any]:
    store = _engine(request).store
    views = await to_thread.run_sync(lambda: store.list_rollouts(active_only=active))
    return {"rollouts": [v.to_dict() for v in views]}


@router.get("/{rollout_id}")
async def rollout_status(rollout_id: RolloutId, request: Request) -> dict[str, Any]:
    store = _engine(request).store

    def read() -> dict[str, Any]:
        counts = store.rollout_state_counts(rollout_id)
        view = store.get_rollout(rollout_id)
        return {**view.to_dict(), "counts": {("unassigned" if w is None else str(w)): c for w, c in counts.items()}}

    return await to_thread.run_sync(read)


@router.post("/{rollout_id}/{command}", dependencies=[Depends(require_operator)])
async def command_rollout(
    rollout_id: RolloutId, command: Annotated[str, Path(pattern="^(pause|resume|cancel)$")], request: Request,
) -> dict[str, Any]:
    return (await _engine(request).command(rollout_id, command)).to_dict()


@router.get("/{rollout_id}/actions")
async def rollout_actions(
    rollout_id: RolloutId, request: Request,
    state: Annotated[str | None, Query(pattern="^(" + "|".join(_STATES) + ")$")] = None,
    after: Annotated[str, Query(max_length=64)] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    store = _engine(request).store
    actions = await to_thread.run_sync(lambda: store.rollout_actions(rollout_id, state, after, limit))
    return {"actions": [a.to_dict() for a in actions], "next_after": actions[-1].box_id if actions else after}


@sites_router.put("/{site}/maintenance", dependencies=[Depends(require_admin)])
async def put_site(site: Annotated[CleanStr, Path(min_length=1, max_length=128)], request: Request) -> JSONResponse:
    try:
        data = json.loads(await request.body())
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested past the parser's depth
        raise PayloadError("bad_json", f"body is not valid JSON: {exc}") from None
    policy = SitePolicy.from_json(site, data)
    await _engine(request).put_site(policy)
    return JSONResponse(policy.to_json())


@sites_router.get("")
async def list_sites(request: Request) -> dict[str, Any]:
    store = _engine(request).store
    return {"sites": [p.to_json() for p in await to_thread.run_sync(store.site_policies)]}
