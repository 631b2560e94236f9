"""Rollouts: a signed update delivered to a target set of boxes in waves (issue 4).

    model.py       value objects (specs, views, reports, inventory), validated on construction
    planner.py     the rules as pure functions: wave to join, error threshold, rate limit
    windows.py     per-site maintenance windows and blackouts in local time (zoneinfo)
    errors.py      UnknownRollout, UnknownAction, RolloutConflict, ActionClosed, ...
    engine.py      RolloutEngine: check-in answers cached in memory, store calls off the loop
    timestamps.py  the lifespan task that keeps the TUF timestamp signed
    cli.py         `quanedge rollout create|status|pause|resume|cancel|list|window`
Storage is behind the `Store` Protocol (fleet_server.store.base); both backends: store/sql_rollouts.py.
Nothing is imported here, so importing the model does not pull in the engine.
"""
