"""End to end on PostgreSQL: a simulated station -> agent -> two `quanedge fleet serve` replicas on
one database, one of them killed with -9 and restarted while the box sends."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from e2e_support import box_config, enroll, http_uplink, start_agent, start_fleet, start_sim, stop, tcp_bus, wait_for
from pg_support import pg_schema


@pytest.mark.slow
def test_two_replicas_on_one_database_store_every_reading_once_through_a_kill(tmp_path: Path) -> None:
    with pg_schema() as (url, schema):
        db = f"{url}?options={quote(f'-c search_path={schema}')}"
        first = start_fleet(tmp_path, db=db, log_name="fleet-1.log")
        second = start_fleet(tmp_path, db=db, admin=first.admin, log_name="fleet-2.log")
        sim, info = start_sim(tmp_path, "--tcp", "0", "--unit", "1", "--unit", "2")
        agent = None
        try:
            # enrolled through replica 1, sending to replica 2: one fleet, whichever process answers
            config, _ = box_config(tmp_path, box="pg-box", bus=tcp_bus(info["tcp_port"]),
                                   devices=[("wxt-1", 1), ("wxt-2", 2)],
                                   uplink=http_uplink(second.url, batch_size=50), poll_s=0.05)
            enroll(first, config)
            agent = start_agent(tmp_path, config)
            wait_for(lambda: len(first.readings("pg-box")) > 200, 60, "readings through replica 2, read on 1")
            second.proc.send_signal(signal.SIGKILL)  # mid-batch: the box keeps what was not acknowledged
            second.proc.wait()
            time.sleep(1.0)
            second = start_fleet(tmp_path, db=db, admin=first.admin, port=int(second.url.rsplit(":", 1)[1]),
                                 log_name="fleet-2.log")
            before = len(first.readings("pg-box"))
            wait_for(lambda: len(first.readings("pg-box")) > before + 200, 60, "readings after the restart")
            stop(agent)
            agent = None
            rows = first.readings("pg-box")
            seqs = [r[0] for r in rows]
            assert seqs == sorted(set(seqs)), "a reading stored twice or out of order"
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a reading went missing"
            with psycopg.connect(url, options=f"-c search_path={schema}") as conn:
                (stored,) = conn.execute("SELECT count(*) FROM readings WHERE box_id = 'pg-box'").fetchone()
                (distinct,) = conn.execute(
                    "SELECT count(DISTINCT seq) FROM readings WHERE box_id = 'pg-box'").fetchone()
                (version,) = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            assert stored == distinct == len(seqs)
            assert version >= 2
        finally:
            stop(agent)
            stop(sim)
            stop(first.proc)
            stop(second.proc)
