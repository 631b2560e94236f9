"""Quanedge edge agent: reads devices, stores every reading durably, forwards it.

Keep imports here empty: `quanedge agent run` must stay lean (no server stack).
"""

__version__ = "0.1.0"
