"""Signed update metadata for Quanedge: a TUF repository (python-tuf) and its admin CLI.

Modules (import them directly; this package imports nothing so a box that only needs the
schema stays lean):

- ``schema``     the Quanedge fields in ``TargetFile.custom`` and semver-like ``Version``
                 (shared with the box's verifier, ``agent.updater.verify``)
- ``keys``       Ed25519 role keys on disk (0600, optionally passphrase-encrypted)
- ``layout``     value objects and crash-safe file helpers of a repository directory
- ``repository`` ``Repository``: init, add_target, sign, refresh_timestamp, rotate_key, status
- ``serve``      a plain HTTP server over metadata/ and targets/ (tests, demos)
- ``cli``        ``quanedge manifest ...`` (a typer sub-app)

See README.md in this folder for the layout, the key custody model and a walkthrough.
"""
