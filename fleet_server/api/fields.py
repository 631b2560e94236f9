"""Field types for the API's pydantic models: the boundary rules of `core.validate`, once.

    Annotated[CleanStr, Field(max_length=128)]   a str of at most 128 characters, valid UTF-8
                                                 (no lone surrogate), no NUL

Every model that takes free text from a client uses `CleanStr` with a max_length: pydantic's
strict `str` lets a lone surrogate ("\\ud800", legal in JSON) through, and SQLite then fails with
UnicodeEncodeError (a 500).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from core.validate import is_clean_text

__all__ = ["CleanStr"]


def _clean(value: str) -> str:
    if not is_clean_text(value):
        raise ValueError("must be valid Unicode text without NUL (no lone surrogates)")
    return value


#: A str that is valid Unicode text without NUL; give it a length cap with Field(max_length=...).
CleanStr = Annotated[str, AfterValidator(_clean)]
