"""Over-the-air updates on the box.

``verify``: the TUF gate. Every update (agent bundle, ONNX model, device firmware, config
bundle) is fetched through ``UpdateVerifier.verify_and_fetch``, which either returns a
``VerifiedTarget`` (a file in the box's target cache whose bytes match signed, policy-checked
metadata) or raises ``UpdateRejected`` with a machine-readable ``reason_code``. The install
state machine (stage -> install -> health check -> commit / roll back) builds on top and only
ever installs a ``VerifiedTarget``.
"""

from agent.updater.verify import ReasonCode, UpdateRejected, UpdateVerifier, VerifiedTarget

__all__ = ["ReasonCode", "UpdateRejected", "UpdateVerifier", "VerifiedTarget"]
