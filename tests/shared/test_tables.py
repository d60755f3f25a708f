"""shared.tables: every format writes text a user or an error message may hold."""

from __future__ import annotations

import io

import pytest
from astropy.io import fits
from astropy.table import Table

from shared.tables import TABLE_FORMATS, ascii_text, build_table, table_bytes

#: A row as batch results carry it: the user's own columns (accents, quotes) and a
#: row error written with the symbols skyserve's messages use.
NAMES = ["id", "name", "status", "error", "inclination"]
ROWS = [
    ["a", 'Galaxié "q"', "succeeded", "", 61.5],
    ["b", "M31", "failed", "Dec '95' is out of range: give −90 ≤ Dec ≤ +90 degrees.", None],
]


def _table() -> Table:
    return build_table(
        NAMES,
        ROWS,
        text_columns=["id", "name"],
        units={"inclination": "deg"},
        descriptions={"inclination": "inclination from face-on (°)"},
        meta={"source": "skyserve — tests"},
    )


def test_ascii_text_spells_symbols_and_drops_accents() -> None:
    assert ascii_text("−90 ≤ Dec ≤ +90, 5′ × 3′, ±2.5°") == "-90 <= Dec <= +90, 5' x 3', +/-2.5 deg"
    assert ascii_text("Sérsic Ångström") == "Sersic Angstrom"
    assert ascii_text("銀河") == "??"
    assert ascii_text("plain") == "plain"


def test_fits_table_holds_non_ascii_text_as_ascii() -> None:
    data = table_bytes(_table(), "fits")
    with fits.open(io.BytesIO(data)) as hdul:
        rows = hdul[1].data
        assert rows["name"][0] == 'Galaxie "q"'
        assert rows["error"][1] == "Dec '95' is out of range: give -90 <= Dec <= +90 degrees."
        assert rows["inclination"][0] == pytest.approx(61.5)
        assert hdul[1].header["TUNIT5"] == "deg"


@pytest.mark.parametrize("fmt", [f for f in TABLE_FORMATS if f not in ("fits", "parquet")])
def test_text_formats_keep_unicode(fmt: str) -> None:
    data = table_bytes(_table(), fmt).decode()
    assert "−90 ≤ Dec" in data or "\\u2212" in data  # JSON may escape it
    assert "Galaxi" in data
