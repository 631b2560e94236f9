"""`quanedge sim ocpp-charger`: simulated OCPP 1.6J charge points (options checked here; the
simulator, drivers/ocpp_charger/sim.py, and the ocpp/websockets packages are imported when it runs)."""

from __future__ import annotations

from typing import Any

import typer

from drivers.sim_support import _check_port, _Control, _fail, _int, _run, _serve

__all__ = ["command"]


def command(
    url: str = typer.Option(..., "--url", help="The box's OCPP endpoint, e.g. ws://127.0.0.1:9000/ocpp "
                                                 "(the charge point id is appended)."),
    cp_id: list[str] = typer.Option(["CP001"], "--cp-id", help="Charge point id; repeat for several chargers."),
    secret: str | None = typer.Option(None, "--secret", help="HTTP Basic password (OCPP security profile 1)."),
    connectors: int = typer.Option(2, "--connectors", help="Connectors per charger (1..32)."),
    meter_s: float = typer.Option(10.0, "--meter-s", help="Seconds between MeterValues while charging (0 = none)."),
    power_kw: float = typer.Option(11.0, "--power-kw", help="Charging power."),
    seed: int = typer.Option(0, help="Noise seed."),
    control: int | None = typer.Option(None, "--control", help="Action port (JSON lines; 0 = any free)."),
    host: str = typer.Option("127.0.0.1", help="Address the control port listens on."),
) -> None:
    """Simulated OCPP 1.6J charge point(s) connecting to the box as their Central System.

    Control actions ("charger" picks one when several; default the first):
    {"plug": 1}, {"start": 1, "id_tag": "04A2B3C4"}, {"stop": 1}, {"fault": 1, "error_code": "GroundFailure"}
    ("NoError" clears it), {"meter": 1} (one MeterValues now), {"disconnect": true}, {"connect": true},
    {"status": true}.
    """

    if not url.startswith(("ws://", "wss://")):
        _fail(f"--url must start with ws:// or wss://, got {url!r}")
    if not cp_id or any(not c or "/" in c for c in cp_id) or len(set(cp_id)) != len(cp_id):
        _fail(f"--cp-id must name distinct non-empty charge point ids without '/', got {cp_id}")
    if secret is not None and len(secret) < 8:
        _fail("--secret must be at least 8 characters")
    if not 1 <= connectors <= 32:
        _fail(f"--connectors must be 1..32, got {connectors}")
    if not 0 <= meter_s <= 3600 or not 0 < power_kw <= 1000:
        _fail(f"--meter-s must be 0..3600 and --power-kw in (0, 1000], got {meter_s}, {power_kw}")
    _check_port("--control", control)

    async def main(stop: Any) -> None:
        from drivers.ocpp_charger.sim import ChargerSim

        sims = {c: ChargerSim(url, c, secret=secret, connectors=connectors, meter_s=meter_s,
                              power_w=power_kw * 1000, seed=seed) for c in cp_id}

        def pick(msg: dict) -> Any:
            name = msg.get("charger", cp_id[0])
            if name not in sims:
                raise ValueError(f"unknown charger {name!r}; known: {', '.join(sims)}")
            return sims[name]

        def conn(msg: dict, key: str, sim: Any) -> int:
            return _int(msg, key, 1, len(sim.connectors))

        async def act(msg: dict, key: str, fn: Any) -> dict:
            sim = pick(msg)
            result = await fn(sim, conn(msg, key, sim))
            return {"result": result, **sim.status()}

        async def start_all() -> None:
            for s in sims.values():
                try:
                    await s.connect()
                except Exception as exc:
                    _fail(f"--url: cannot connect {s.cp_id} to {url}: {exc}")

        async def stop_all() -> None:
            for s in sims.values():
                await s.disconnect()

        handlers = {
            "plug": lambda m: act(m, "plug", lambda s, n: s.plug(n)),
            "start": lambda m: act(m, "start", lambda s, n: s.start(n, str(m.get("id_tag", "SIMTAG01")))),
            "stop": lambda m: act(m, "stop", lambda s, n: s.stop(n)),
            "meter": lambda m: act(m, "meter", lambda s, n: s.meter(n)),
            "fault": lambda m: act(m, "fault", lambda s, n: s.fault(n, str(m.get("error_code", "GroundFailure")))),
            "disconnect": lambda m: _async(pick(m).disconnect(), pick(m)),
            "connect": lambda m: _async(pick(m).connect(), pick(m)),
        }
        ctl = _Control(handlers, lambda: {"chargers": [s.status() for s in sims.values()]})
        info = {"device": "ocpp_charger", "url": url, "chargers": list(cp_id), "connectors": connectors}
        await _serve(ctl, host, control, info, stop, stop_all, start=start_all)

    _run(main)


async def _async(coro: Any, sim: Any) -> dict:
    try:
        await coro
    except OSError as exc:
        raise ValueError(f"charger {sim.cp_id}: {exc}") from None
    return sim.status()


if __name__ == "__main__":  # python -m drivers.ocpp_charger.sim_cli --url ws://127.0.0.1:9000/ocpp --control 0
    typer.run(command)
