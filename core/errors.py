"""Quanedge's own exception tree.

Library errors (pymodbus, aiomqtt, httpx, sqlite3) are translated into these at ONE
boundary each (the driver, the uplink, the buffer), with ``raise Mapped(...) from exc``,
so the rest of the agent never catches a third-party exception type.

    QuanedgeError
    ├── ConfigError            bad box config or device profile; names file, key, value, expected
    │   └── ModelLoadError     edge_models.manifest: a model missing, corrupt or not matching its manifest
    ├── DriverError            anything that went wrong talking to a device
    │   ├── DeviceTimeout      no reply within the timeout (a silent RS-485 slave)
    │   ├── DeviceException    the device answered with a protocol exception (Modbus code 01..0B)
    │   ├── FrameError         a reply that cannot be decoded (CRC, length, wrong unit id, garbage)
    │   ├── LinkError          the port or connection itself failed (cannot open, refused, lost)
    │   └── CommandRefused     a write/command refused before it reached the device
    ├── StorageError           the durable buffer failed (disk error, corrupt file)
    │   └── BufferClosed       the buffer is shut down; nothing was written
    ├── RecordRefused          one record that can never be stored (bad text, non-finite value); names the field
    ├── UplinkError            forwarding failed; the records stay in the buffer
    │   ├── UplinkUnavailable  transient: broker/server unreachable, timeout; retry with backoff
    │   └── UplinkRejected     the far side refused the batch (bad credential, malformed); not retried blindly
    │       └── UplinkMalformed  the batch itself is bad (encoder refused it, server 400/422): quarantine, not retry
    ├── ModelRunError          edge_models.runtime: a model failed at run time (readings go on unjudged)
    ├── EnrollmentError        enrollment with the fleet server failed
    ├── UpdateRejected         agent.updater.verify: an update failed verification (reason_code says why)
    ├── ManifestError          firmware_manifests: update repository tooling errors
    └── FleetError             fleet_server.errors: the server's own tree (store, auth, payloads)
"""

from __future__ import annotations

from typing import Any


class QuanedgeError(Exception):
    """Root of every error Quanedge raises on purpose."""


class ConfigError(QuanedgeError):
    """A configuration or profile value is wrong.

    The message always names where (file and dotted key), the bad value and what was expected,
    so an installer on a pole can fix it without reading code.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        value: Any = None,
        expected: str | None = None,
    ) -> None:
        self.file = file
        self.key = key
        self.value = value
        self.expected = expected
        parts = []
        if file:
            parts.append(str(file))
        if key:
            parts.append(f"[{key}]")
        where = ": ".join(parts)
        text = f"{where}: {message}" if where else message
        if value is not None:
            text += f" (got {value!r})"
        if expected:
            text += f"; expected {expected}"
        super().__init__(text)


class DriverError(QuanedgeError):
    """Talking to a device failed."""


class DeviceTimeout(DriverError):
    """The device did not answer within the timeout."""


class DeviceException(DriverError):
    """The device answered with a protocol exception code."""

    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(f"{message} (exception code {code:#04x})")


class FrameError(DriverError):
    """A reply arrived but could not be decoded."""


class LinkError(DriverError):
    """The serial port or TCP connection itself failed."""


class CommandRefused(DriverError):
    """A command was refused before it reached the device (not allowed, guard rule)."""


class StorageError(QuanedgeError):
    """The durable buffer failed."""


class BufferClosed(StorageError):
    """The buffer has been closed; nothing was written."""


class RecordRefused(QuanedgeError):
    """A record that can never be stored or sent as it is; `reason` names the field and the rule."""

    def __init__(self, reason: str, *, index: int | None = None) -> None:
        self.reason = reason
        self.index = index
        super().__init__(reason if index is None else f"record {index}: {reason}")


class UplinkError(QuanedgeError):
    """Forwarding a batch failed; the batch stays in the buffer."""


class UplinkUnavailable(UplinkError):
    """Transient failure (unreachable, timeout, disconnected): retry with backoff."""


class UplinkUnacknowledged(UplinkUnavailable):
    """The transport took the batch but the fleet server did not confirm storing it in time: send it
    again. Reconnecting does not cure this one; only a confirmed batch does."""


class UplinkRejected(UplinkError):
    """The far side refused the batch (bad credential, malformed body)."""


class UplinkMalformed(UplinkRejected):
    """The batch itself is malformed (not a credential problem): retrying it as it is cannot help.

    `row` is the index in the batch of the offending row when the far side (or the encoder) named
    it, else None (the drain then bisects); `field` the offending field when known."""

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None) -> None:
        self.row = row
        self.field = field
        super().__init__(message)


class EnrollmentError(QuanedgeError):
    """Enrollment with the fleet server failed."""
