"""The target custom-field schema and its version order (shared by repo tooling and box)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_manifests.schema import TargetKind, TargetMeta, Version

V = Version.parse


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.9.0", "1.10.0"),  # numeric, not lexical
        ("1.2", "1.2.1"),
        ("2.0.0-rc.1", "2.0.0"),  # a prerelease sorts before its release
        ("2.0.0-alpha", "2.0.0-alpha.1"),
        ("2.0.0-alpha.1", "2.0.0-alpha.beta"),  # numeric identifiers before alphanumeric
        ("2.0.0-beta.2", "2.0.0-beta.11"),
        ("2.0.0-rc.1", "2.0.0-rc.1a"),
        ("0.9.9.9", "1"),
        ("v1.0.0", "1.0.1"),
    ],
)
def test_version_order(lower: str, higher: str) -> None:
    assert V(lower) < V(higher)
    assert V(higher) > V(lower)
    assert not V(higher) <= V(lower)


@pytest.mark.parametrize(("a", "b"), [("1.2", "1.2.0"), ("1.2.0+build.7", "1.2.0"), ("v3", "3.0.0.0")])
def test_versions_that_are_equal(a: str, b: str) -> None:
    assert V(a) == V(b)
    assert hash(V(a)) == hash(V(b))


@pytest.mark.parametrize("bad", ["", "abc", "1.2.3.4.5", "1..2", "1.2-", "1.2+", "-1.0", "1.0 beta", None, 3])
def test_rejects_non_versions(bad: object) -> None:
    with pytest.raises(ValueError, match="not a version"):
        Version.parse(bad)  # type: ignore[arg-type]


_ident = st.one_of(st.integers(0, 999), st.from_regex(r"[a-z][a-z0-9-]{0,5}", fullmatch=True))
_versions = st.builds(
    Version,
    st.lists(st.integers(0, 99), min_size=1, max_size=4).map(tuple),
    st.lists(_ident, max_size=3).map(tuple),
    st.sampled_from(["", "build.1", "sha-abc"]),
)


@given(_versions)
def test_version_text_round_trips(v: Version) -> None:
    again = Version.parse(str(v))
    assert again == v
    assert str(again) == str(v)


@given(_versions, _versions, _versions)
def test_version_order_is_a_total_order(a: Version, b: Version, c: Version) -> None:
    assert (a < b) + (a == b) + (a > b) == 1
    if a <= b and b <= c:
        assert a <= c


def test_target_meta_round_trips_through_custom() -> None:
    meta = TargetMeta.build("device_firmware", "2.1.0", ["signctl-v2", "signctl-v3"], "2.0")
    custom = meta.to_custom()
    assert custom == {
        "kind": "device_firmware",
        "version": "2.1.0",
        "hardware": ["signctl-v2", "signctl-v3"],
        "min_from_version": "2.0",
    }
    assert TargetMeta.from_custom(custom) == meta
    assert meta.kind is TargetKind.DEVICE_FIRMWARE
    assert meta.supports("signctl-v3") and not meta.supports("signctl-v1")


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        (None, "no Quanedge custom fields"),
        ({"kind": "device_firmware", "version": "1.0"}, "missing: hardware"),
        ({"kind": "toaster", "version": "1.0", "hardware": ["a"]}, "unknown kind 'toaster'"),
        ({"kind": "onnx_model", "version": "x", "hardware": ["a"]}, "not a version"),
        ({"kind": "onnx_model", "version": "1.0", "hardware": []}, "hardware list is empty"),
        ({"kind": "onnx_model", "version": "1.0", "hardware": "a"}, "must be a list"),
        ({"kind": "onnx_model", "version": "1.0", "hardware": ["has space"]}, "bad hardware id"),
        (
            {"kind": "onnx_model", "version": "1.0", "hardware": ["a"], "min_from_version": "1.0"},
            "must be lower than version",
        ),
    ],
)
def test_malformed_custom_fields_are_refused(custom: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TargetMeta.from_custom(custom)
