"""The broker goes away for a while: readings stay buffered, then all arrive, in order, once."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from e2e_support import (
    Mosquitto,
    box_config,
    enroll,
    health,
    mqtt_uplink,
    start_agent,
    start_fleet,
    start_sim,
    stop,
    tcp_bus,
    wait_for,
)


class Collector:
    """A persistent-session subscriber recording telemetry seqs in arrival order."""

    def __init__(self, port: int, topic: str) -> None:
        self.seqs: list[int] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"collector-{secrets.token_hex(3)}",
                             clean_session=False)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(0.2, 1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c, u, msg) -> None:
        import json
        body = json.loads(msg.payload)
        with self.lock:
            self.seqs.extend(row[0] for row in body["readings"])

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.mark.slow
def test_broker_outage_then_every_reading_arrives_in_order(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path).start()
    prefix = f"qe-outage-{secrets.token_hex(3)}"
    fleet = start_fleet(tmp_path, mqtt_port=broker.port, prefix=prefix)
    sim, info = start_sim(tmp_path, "--tcp", "0", "--unit", "1", "--unit", "2")
    collector = Collector(broker.port, f"{prefix}/outage-box/telemetry")
    agent = None
    try:
        config, hport = box_config(tmp_path, box="outage-box", bus=tcp_bus(info["tcp_port"]),
                                   devices=[("wxt-1", 1), ("wxt-2", 2)], uplink=mqtt_uplink(broker.port, prefix),
                                   poll_s=0.1)
        enroll(fleet, config)
        agent = start_agent(tmp_path, config)
        wait_for(lambda: health(hport)["uplink"]["sent"] > 0, 30, "first readings sent")
        broker.stop()
        wait_for(lambda: not health(hport)["uplink"]["connected"], 15, "agent notices the broker is gone")
        time.sleep(3)
        depth_during = health(hport)["buffer_depth"]
        assert depth_during > 100, "readings should pile up in the buffer while the broker is down"
        broker.start()
        def drained() -> dict | None:
            h = health(hport)
            return h if h["uplink"]["connected"] and h["buffer_depth"] == 0 else None
        last_sent = wait_for(drained, 60, "buffer drained after the outage")["last_seq"]
        stop(agent)
        wait_for(lambda: fleet.readings("outage-box")[-1][0] >= last_sent, 30, "fleet server caught up")
        seqs = [r[0] for r in fleet.readings("outage-box")]
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a reading is missing after the outage"
        final_seq = seqs[-1]
        # Arrival order at a subscriber: resends may repeat a batch, but first arrivals only go up.
        with collector.lock:
            arrived = list(collector.seqs)
        first: list[int] = []
        seen: set[int] = set()
        for s in arrived:
            if s not in seen:
                seen.add(s)
                first.append(s)
        assert first == sorted(first), "readings arrived out of order"
        assert first[-1] >= final_seq - 1
    finally:
        collector.close()
        stop(agent)
        stop(sim)
        stop(fleet.proc)
        broker.stop()
