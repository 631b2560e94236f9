"""`python -m bench.delivery`: readings lost on the MQTT path when the broker or the fleet server
fails, and the end-to-end drain rate, on real mosquitto and fleet server processes.

Prints one JSON object: readings (per scenario), lost_queue_overflow, lost_broker_crash,
lost_server_down (targets: 0), gaps_* (seq_gap alerts; target 0), broker_dropped_in_overflow (the
overflow really happened), and drain_mqtt_e2e_per_s (a full buffer drained through the broker to
the fleet server, each batch deleted only on the server's ack; target >= 50,000). For comparison
it re-runs the overflow and the crash with `ack = "broker"` (rows deleted on the broker's PUBACK,
as before issue 11): lost_*_puback_only shows what that loses, gaps_*_puback_only that the server
notices it.
See hil_tests/delivery.py for what each scenario does.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from hil_tests import delivery


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readings", type=int, default=20_000, help="readings per failure scenario")
    p.add_argument("--drain-readings", type=int, default=200_000, help="readings in the full buffer drained")
    p.add_argument("--rate", type=float, default=2000.0, help="readings per second the box takes")
    p.add_argument("--only", choices=("queue_overflow", "broker_crash", "server_down", "drain"), default=None)
    p.add_argument("--skip-puback-only", action="store_true",
                   help="skip re-running the failures with ack = \"broker\" (what PUBACK-only delivery loses)")
    args = p.parse_args()
    out: dict[str, object] = {"readings": args.readings, "machine": f"{platform.machine()} {platform.python_version()}",
                              "when": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        work = Path(tmp)
        if args.only in (None, "queue_overflow"):
            o = delivery.queue_overflow(work / "overflow", args.readings, rate=args.rate, down_s=20)
            out.update(lost_queue_overflow=o.lost, gaps_queue_overflow=o.gaps,
                       broker_dropped_in_overflow=o.broker_dropped, queue_overflow_s=o.seconds)
        if args.only in (None, "broker_crash"):
            o = delivery.broker_crash(work / "crash", args.readings, rate=args.rate, gap_s=10)
            out.update(lost_broker_crash=o.lost, gaps_broker_crash=o.gaps, broker_crash_s=o.seconds)
        if args.only in (None, "server_down"):
            o = delivery.server_down(work / "down", args.readings, rate=args.rate, down_s=30)
            out.update(lost_server_down=o.lost, gaps_server_down=o.gaps, server_down_s=o.seconds)
        if args.only is None and not args.skip_puback_only:  # the same failures with PUBACK-only delivery
            # A quarter of the rate, so the box still takes readings once the server is back: the
            # server learns of a loss from the marks of the batches that follow it.
            o = delivery.queue_overflow(work / "overflow-puback", args.readings, rate=args.rate / 4, down_s=20,
                                        ack="broker")
            out.update(lost_queue_overflow_puback_only=o.lost, gaps_queue_overflow_puback_only=o.gaps)
            o = delivery.broker_crash(work / "crash-puback", args.readings, rate=args.rate / 4, gap_s=10, ack="broker")
            out.update(lost_broker_crash_puback_only=o.lost, gaps_broker_crash_puback_only=o.gaps)
        if args.only in (None, "drain"):
            per_s, o = delivery.drain_e2e(work / "drain", args.drain_readings)
            out.update(drain_mqtt_e2e_per_s=round(per_s), drain_readings=o.taken, lost_drain=o.lost)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
