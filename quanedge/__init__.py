"""The `quanedge` command: the root that composes every package's own command group.

    quanedge agent ...      the edge agent on a box               (agent/cli.py)
    quanedge scan ...       find and identify the slaves on a bus (agent/scan.py)
    quanedge sim ...        device simulators, the simulated fleet (hil_tests/sims/cli.py, drivers/<kind>/sim_cli.py)
    quanedge fleet ...      the fleet server and its admin tools   (fleet_server/cli.py)
    quanedge rollout ...    OTA rollouts, for fleet admins         (fleet_server/rollout/cli.py)
    quanedge manifest ...   signed update metadata                 (firmware_manifests/cli.py)
    quanedge models ...     edge models                            (edge_models/cli.py)
    quanedge demo           simulated devices -> agent -> fleet server

It sits at the top: nothing imports it, and it imports a group only when that group is called, so
`quanedge agent ...` on a box never loads the fleet server's stack.
"""
