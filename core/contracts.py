"""What the box and the fleet server agree on, written once.

Update actions (the check-in contract). The server assigns an action of a rollout *kind*; the box
installs a TUF target of the matching *target kind*, and reports *box states* until a final one:

    pending -> assigned -> proceeding -> downloading -> downloaded -> installing -> restarting
            -> success | failure | rejected | canceled        (final: the action is closed)

`pending` and `assigned` are the server's own (not yet told / told, not yet acknowledged); a box
reports any of `BOX_STATES`. Enums subclass `str`, so a member compares equal to its wire value.

The telemetry row (one reading on the wire) is `core.reading.ROW_FIELDS`, encoded by
`Reading.to_row` and decoded by `core.reading.from_row`: written once, there.
"""

from __future__ import annotations

import enum

__all__ = ["UpdateKind", "ReportState", "KIND_TO_TARGET", "BOX_STATES", "FINAL_STATES", "ERROR_STATES"]


class UpdateKind(str, enum.Enum):
    AGENT = "agent"
    MODEL = "model"
    FIRMWARE = "firmware"
    CONFIG = "config"


class ReportState(str, enum.Enum):
    """What a box reports about an action (non-final first, then the final ones)."""

    PROCEEDING = "proceeding"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    RESTARTING = "restarting"
    SUCCESS = "success"
    FAILURE = "failure"
    REJECTED = "rejected"
    CANCELED = "canceled"


#: rollout kind -> the TUF target kind (firmware_manifests.schema.TargetKind value) it installs
KIND_TO_TARGET: dict[str, str] = {
    UpdateKind.AGENT.value: "agent_bundle", UpdateKind.MODEL.value: "onnx_model",
    UpdateKind.FIRMWARE.value: "device_firmware", UpdateKind.CONFIG.value: "config_bundle",
}
BOX_STATES: tuple[str, ...] = tuple(s.value for s in ReportState)
FINAL_STATES: frozenset[str] = frozenset({ReportState.SUCCESS.value, ReportState.FAILURE.value,
                                          ReportState.REJECTED.value, ReportState.CANCELED.value})
#: final states that count against a wave's error threshold (a timeout is a `failure`)
ERROR_STATES: frozenset[str] = frozenset({ReportState.FAILURE.value, ReportState.REJECTED.value})

