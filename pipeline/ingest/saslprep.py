"""SASLprep (RFC 4013), the preparation PDF 2.0 requires of AES-256 passwords.

ISO 32000-2, 7.6.4.3.3: before a revision 6 (AES-256) file hashes a password,
the password is processed with the SASLprep profile of stringprep (RFC 4013
over RFC 3454) with the Normalize and BiDi options, then encoded in UTF-8.
A reader that follows the spec stores and checks the *prepared* password, so
a user who typed ``pass\\u00adword`` (with a soft hyphen) or ``\\u00aa``
(FEMININE ORDINAL, NFKC ``a``) must be able to type it again. Poppler 22.12
hashes the bytes it is given and does no SASLprep (``tests/test_render.py``
checks this), so the renderer prepares passwords itself and tries both forms.

Why here and not a package: no maintained PyPI package provides SASLprep on
its own (pymongo and pyHanko each carry a private copy), and the standard
library has everything it needs: ``stringprep`` holds RFC 3454's tables
(Unicode 3.2, as the RFC specifies) and ``unicodedata.ucd_3_2_0`` the
matching NFKC.

Two readings the RFC leaves open, chosen as pyHanko and pymongo do:

* U+200B ZERO WIDTH SPACE is both a non-ASCII space (table C.1.2) and
  "commonly mapped to nothing" (B.1): it is removed (B.1 first);
* the string is prepared as a *query* (RFC 3454, 7): code points unassigned
  in Unicode 3.2 are let through, since a password is only compared.
"""

from __future__ import annotations

import stringprep
import unicodedata
from collections.abc import Callable

__all__ = ["SASLprepError", "saslprep"]

# RFC 4013, 2.3: prohibited output (C.1.2 is mapped to a space first; kept as RFC 4013 lists it).
_PROHIBITED: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("a non-ASCII space", stringprep.in_table_c12),
    ("a control character", stringprep.in_table_c21_c22),
    ("a private-use character", stringprep.in_table_c3),
    ("a non-character code point", stringprep.in_table_c4),
    ("a surrogate code point", stringprep.in_table_c5),
    ("a character inappropriate for plain text", stringprep.in_table_c6),
    ("a character inappropriate for canonical representation", stringprep.in_table_c7),
    ("a display-property or deprecated character", stringprep.in_table_c8),
    ("a tagging character", stringprep.in_table_c9),
)


class SASLprepError(ValueError):
    """The string holds a character SASLprep prohibits. Says which kind, never the string."""


def saslprep(text: str) -> str:
    """``text`` prepared by RFC 4013 (as a query string); raises ``SASLprepError``.

    Map (non-ASCII spaces to U+0020, table B.1 to nothing), normalise (NFKC),
    refuse prohibited output, check bidirectional text (RFC 3454, 6).
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(char) else char
        for char in text
        if not stringprep.in_table_b1(char)
    )
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for char in prepared:
        for what, prohibited in _PROHIBITED:
            if prohibited(char):
                raise SASLprepError(f"SASLprep prohibits {what}")
    if any(stringprep.in_table_d1(char) for char in prepared):
        if any(stringprep.in_table_d2(char) for char in prepared):
            raise SASLprepError("SASLprep prohibits mixing right-to-left and left-to-right text")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise SASLprepError("SASLprep requires right-to-left text to start and end so")
    return prepared
