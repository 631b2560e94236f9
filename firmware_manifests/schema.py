"""The Quanedge fields carried in a TUF ``TargetFile.custom`` and the version order they use.

This module is the contract between the repository tooling (which writes the fields) and the
box's verifier (which enforces them), so it imports nothing but the standard library and our
error tree: it ships on every box.

A target's ``custom`` object::

    {"kind": "device_firmware", "version": "2.1.0", "hardware": ["signctl-v2"],
     "min_from_version": "2.0.0"}       # min_from_version may be null

Versions are semver-like: 1 to 4 dot-separated numbers, an optional ``-prerelease`` and an
optional ``+build``. ``1.2`` equals ``1.2.0``; ``1.10.0 > 1.9.0``; ``2.0.0-rc.1 < 2.0.0``;
build metadata is ignored when comparing.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from core.errors import QuanedgeError

__all__ = ["ManifestError", "TargetKind", "TargetMeta", "Version"]


class ManifestError(QuanedgeError):
    """Update metadata, a key file or a repository directory is wrong; the text names which."""

    def __init__(self, message: str, *, file: object = None, key: str | None = None) -> None:
        self.file = None if file is None else str(file)
        self.key = key
        where = ": ".join(p for p in (self.file, f"[{key}]" if key else None) if p)
        super().__init__(f"{where}: {message}" if where else message)


class TargetKind(str, enum.Enum):
    """What a target installs; the agent keeps one installed version per kind."""

    AGENT_BUNDLE = "agent_bundle"
    ONNX_MODEL = "onnx_model"
    DEVICE_FIRMWARE = "device_firmware"
    CONFIG_BUNDLE = "config_bundle"


_VERSION_RE = re.compile(
    r"^v?(?P<release>\d+(?:\.\d+){0,3})"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_HARDWARE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


@dataclass(frozen=True, eq=False)
class Version:
    """A parsed semver-like version; compare with ``<``, ``==``; ``str()`` gives it back."""

    release: tuple[int, ...]
    prerelease: tuple[int | str, ...] = ()
    build: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION_RE.match(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise ValueError(
                f"not a version: {text!r}; expected e.g. 2.1.0, 2.1.0-rc.1 or 2.1.0+build.7"
            )
        release = tuple(int(part) for part in match["release"].split("."))
        pre = tuple(
            int(ident) if ident.isdigit() else ident
            for ident in (match["pre"].split(".") if match["pre"] else ())
        )
        return cls(release, pre, match["build"] or "")

    def _key(self) -> tuple:
        release = self.release + (0,) * (4 - len(self.release))
        # A release sorts after all of its prereleases; inside a prerelease numeric
        # identifiers sort before alphanumeric ones (semver rule 11).
        pre = tuple((0, i, "") if isinstance(i, int) else (1, 0, i) for i in self.prerelease)
        return (release, 0 if self.prerelease else 1, pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __le__(self, other: Version) -> bool:
        return self == other or self < other

    def __gt__(self, other: Version) -> bool:
        return not self <= other

    def __ge__(self, other: Version) -> bool:
        return not self < other

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = ".".join(str(n) for n in self.release)
        if self.prerelease:
            text += "-" + ".".join(str(i) for i in self.prerelease)
        if self.build:
            text += "+" + self.build
        return text


@dataclass(frozen=True)
class TargetMeta:
    """The Quanedge policy fields of one target, validated on construction."""

    kind: TargetKind
    version: Version
    hardware: tuple[str, ...]
    min_from_version: Version | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, TargetKind):
            raise ValueError(f"kind must be a TargetKind, got {self.kind!r}")
        if not self.hardware:
            raise ValueError("hardware list is empty; name at least one compatible hardware id")
        for hw in self.hardware:
            if not isinstance(hw, str) or not _HARDWARE_RE.match(hw):
                raise ValueError(
                    f"bad hardware id {hw!r}; expected letters, digits and . _ : - (max 64)"
                )
        if self.min_from_version is not None and self.min_from_version >= self.version:
            raise ValueError(
                f"min_from_version {self.min_from_version} must be lower than "
                f"version {self.version}"
            )

    @classmethod
    def build(
        cls,
        kind: str | TargetKind,
        version: str,
        hardware: list[str] | tuple[str, ...],
        min_from_version: str | None = None,
    ) -> TargetMeta:
        """Validate loosely typed input (CLI, JSON); raises ``ValueError`` naming the field."""
        try:
            kind = TargetKind(kind)
        except ValueError:
            choices = ", ".join(k.value for k in TargetKind)
            raise ValueError(f"unknown kind {kind!r}; expected one of {choices}") from None
        if isinstance(hardware, str) or not isinstance(hardware, (list, tuple)):
            raise ValueError(f"hardware must be a list of ids, got {hardware!r}")
        return cls(
            kind,
            Version.parse(version),
            tuple(dict.fromkeys(hardware)),
            None if min_from_version is None else Version.parse(min_from_version),
        )

    @classmethod
    def from_custom(cls, custom: Any) -> TargetMeta:
        """Read the fields from ``TargetFile.custom``; raises ``ValueError`` when malformed."""
        if not isinstance(custom, dict):
            raise ValueError("target has no Quanedge custom fields (kind, version, hardware)")
        missing = [k for k in ("kind", "version", "hardware") if k not in custom]
        if missing:
            raise ValueError(f"custom fields missing: {', '.join(missing)}")
        return cls.build(
            custom["kind"], custom["version"], custom["hardware"], custom.get("min_from_version")
        )

    def to_custom(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "version": str(self.version),
            "hardware": list(self.hardware),
            "min_from_version": None if self.min_from_version is None else str(self.min_from_version),
        }

    def supports(self, hardware: str) -> bool:
        return hardware in self.hardware
