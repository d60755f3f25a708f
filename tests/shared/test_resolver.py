"""The OpenNGC resolver against the real database shipped in the pyongc wheel."""

from __future__ import annotations

import pickle

import pytest

from shared.coordinates import parse_coordinates
from shared.errors import InvalidRequest, UnknownTarget
from shared.resolver import (
    DEFAULT_FOV_ARCMIN,
    CatalogObject,
    Resolver,
    default_db_path,
    field_of_view_arcmin,
    get_resolver,
    normalise_identifier,
)


@pytest.fixture(scope="module")
def resolver() -> Resolver:
    return get_resolver()


def test_database_is_used_in_place_from_the_wheel() -> None:
    path = default_db_path()
    assert path.is_file() and path.parent.name == "pyongc"


def test_pgc_2557_is_the_andromeda_galaxy_with_incli_nets_numbers(resolver: Resolver) -> None:
    obj = resolver.resolve_pgc(2557)
    assert obj.name == "NGC0224"
    assert obj.type == "G" and obj.type_name == "Galaxy" and obj.hubble == "Sb"
    # OpenNGC gives Dec 41.26906°; IncliNET's HyperLEDA value is 41.2689° (0.6″ apart).
    assert obj.ra_deg == pytest.approx(10.6848, abs=3e-4)
    assert obj.dec_deg == pytest.approx(41.2689, abs=3e-4)
    assert obj.majax_arcmin == pytest.approx(177.8, abs=0.05)
    assert obj.minax_arcmin == pytest.approx(69.7, abs=0.05)
    assert obj.pa_deg == 35
    assert obj.axis_ratio == pytest.approx(69.66 / 177.83)
    assert obj.pgc == 2557
    for ident in ("M31", "PGC 2557", "UGC 454", "MCG+07-02-016", "Andromeda Galaxy"):
        assert ident in obj.identifiers
    dumped = obj.model_dump()
    assert dumped["axis_ratio"] == pytest.approx(obj.axis_ratio) and dumped["pgc"] == 2557


@pytest.mark.parametrize(
    "query",
    [
        "2557",
        2557,
        "PGC 2557",
        "PGC002557",
        "pgc2557",
        "PGC 002557",
        "LEDA 2557",
        "NGC 224",
        "ngc0224",
        "NGC224",
        "  ngc   224 ",
        "M31",
        "M 31",
        "m31",
        "Messier 31",
        "M031",
        "UGC 454",
        "UGC00454",
        "MCG +07-02-016",
        "MCG+07-02-016",
        "2MASX J00424433+4116074",
        "Andromeda Galaxy",
        "andromeda galaxy",
        "ANDROMEDAGALAXY",
        "Andromeda  Galaxy",
    ],
)
def test_every_spelling_of_m31_resolves_to_ngc224(resolver: Resolver, query: str | int) -> None:
    assert resolver.resolve(query).name == "NGC0224"


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("IC 1101", "IC1101"),
        ("ic1101", "IC1101"),
        ("PGC 54167", "IC1101"),
        ("ESO 545-008", "IC0223"),
        ("Bode's Galaxy", "NGC3031"),
        ("bodes galaxy", "NGC3031"),
        ("IC 80 NED01", "IC0080 NED01"),
        ("M 51", "NGC5194"),
        ("Whirlpool Galaxy", "NGC5194"),
    ],
)
def test_other_catalogues_and_common_names(resolver: Resolver, query: str, name: str) -> None:
    assert resolver.resolve(query).name == name


@pytest.mark.parametrize(
    ("duplicate", "primary"),
    [("NGC 651", "NGC0650"), ("IC 11", "NGC0281"), ("M102", "NGC5457")],
)
def test_duplicate_rows_follow_to_the_primary_object(
    resolver: Resolver, duplicate: str, primary: str
) -> None:
    obj = resolver.resolve(duplicate)
    assert obj.name == primary and obj.type != "Dup"


def test_unknown_name_suggests_close_matches(resolver: Resolver) -> None:
    with pytest.raises(UnknownTarget) as info:
        resolver.resolve("Andromeda Galxy")
    err = info.value
    assert err.status == 404
    assert err.extra["suggestions"][0] == "Andromeda Galaxy"
    assert len(err.extra["suggestions"]) <= 5
    assert "Andromeda Galaxy" in err.detail
    problem = pickle.loads(pickle.dumps(err)).to_problem()  # survives Celery
    assert problem["suggestions"] == err.extra["suggestions"]


def test_unknown_catalog_number_suggests_numbers_of_that_catalog(resolver: Resolver) -> None:
    with pytest.raises(UnknownTarget) as info:
        resolver.resolve("NGC 22444")
    suggestions = info.value.extra["suggestions"]
    assert 0 < len(suggestions) <= 5 and all(s.startswith("NGC ") for s in suggestions)


def test_an_unlisted_pgc_number_says_to_give_a_position_not_look_alikes(
    resolver: Resolver,
) -> None:
    with pytest.raises(UnknownTarget) as info:
        resolver.resolve_pgc(99_999_999)
    assert info.value.extra["suggestions"] == []
    assert "PGC 99999999 is not in OpenNGC" in info.value.detail
    assert "ra and dec" in info.value.detail and "Did you mean" not in info.value.detail


def test_nonsense_gives_no_suggestions_and_empty_is_invalid(resolver: Resolver) -> None:
    with pytest.raises(UnknownTarget) as info:
        resolver.resolve("qqqqqqq")
    assert info.value.extra["suggestions"] == []
    with pytest.raises(InvalidRequest):
        resolver.resolve("   ")
    with pytest.raises(InvalidRequest):
        resolver.resolve_pgc(-3)
    assert resolver.get("no such thing") is None


def test_normalisation() -> None:
    assert normalise_identifier("PGC 002557") == "PGC2557"
    assert normalise_identifier("2557") == "PGC2557"
    assert normalise_identifier("Messier 031") == "M31"
    assert normalise_identifier("MCG +07-02-016") == "MCG+7-2-16"
    assert normalise_identifier("Bode's  Galaxy") == "BODESGALAXY"


@pytest.mark.parametrize(
    ("ra", "dec", "expected"),
    [
        (10.6848, 41.2689, (10.6848, 41.2689)),
        ("10.6848", "41.2689", (10.6848, 41.2689)),
        ("00h42m44.3s", "+41d16m09s", (10.684583, 41.269167)),
        ("00:42:44.3", "+41:16:09", (10.684583, 41.269167)),
        ("00 42 44.3", "+41 16 09", (10.684583, 41.269167)),
        ("10d41m04.5s", "41.2689", (10.684583, 41.2689)),
        ("00:42:44.3 +41:16:09", None, (10.684583, 41.269167)),
        ("10.6848 41.2689", None, (10.6848, 41.2689)),
        ("12h30m49.4s", "-12d23m28s", (187.705833, -12.391111)),
        (0, -90, (0.0, -90.0)),
    ],
)
def test_coordinates_in_degrees_and_sexagesimal(
    ra: float | str, dec: float | str | None, expected: tuple[float, float]
) -> None:
    position = parse_coordinates(ra, dec)
    assert position.ra_deg == pytest.approx(expected[0], abs=1e-5)
    assert position.dec_deg == pytest.approx(expected[1], abs=1e-5)
    assert Resolver.parse_coordinates(ra, dec) == position


@pytest.mark.parametrize(
    ("ra", "dec", "says"),
    [
        ("abc", "10", "not a coordinate"),
        ("10", "north", "not a coordinate"),
        (400, 0, "out of range"),
        (-1, 0, "out of range"),
        (10, 95, "out of range"),
        ("10", "-90.5", "out of range"),
        ("nan", "0", "finite"),
        (float("inf"), 0, "finite"),
        ("00:42:44.3", None, "Cannot tell RA from Dec"),
        (10.0, None, "both RA and Dec"),
    ],
)
def test_bad_coordinates_are_invalid_requests_with_a_reason(
    ra: object, dec: object, says: str
) -> None:
    with pytest.raises(InvalidRequest, match=says):
        parse_coordinates(ra, dec)  # type: ignore[arg-type]


def test_cone_search_finds_ngc224_first_and_m32_nearby(resolver: Resolver) -> None:
    hits = resolver.cone_search(10.6848, 41.2689, radius_arcmin=30)
    assert hits[0][0].name == "NGC0224" and hits[0][1] < 0.05
    names = [obj.name for obj, _ in hits]
    assert "NGC0221" in names  # M32, 24′ south
    separations = [sep for _, sep in hits]
    assert separations == sorted(separations) and all(s <= 30 for s in separations)
    m32 = dict((obj.name, sep) for obj, sep in hits)["NGC0221"]
    assert m32 == pytest.approx(24.2, abs=0.2)


def test_cone_search_filters_and_nearest(resolver: Resolver) -> None:
    assert resolver.cone_search(10.6848, 41.2689, 30, types={"PN"}) == []
    found = resolver.nearest(10.70, 41.27, max_arcmin=5)
    assert found is not None and found[0].name == "NGC0224"
    assert resolver.nearest(10.6848, 41.2689 + 2.0, max_arcmin=1) is None
    # Across RA = 0: a position at 359.95° still finds objects just east of 0°.
    near_zero = resolver.cone_search(359.95, 0.0, radius_arcmin=300)
    assert any(obj.ra_deg is not None and obj.ra_deg < 5 for obj, _ in near_zero)
    with pytest.raises(InvalidRequest):
        resolver.cone_search(10.0, 41.0, radius_arcmin=0)


def test_field_of_view_is_one_and_a_half_major_axes(resolver: Resolver) -> None:
    assert field_of_view_arcmin(resolver.resolve("NGC 224")) == pytest.approx(1.5 * 177.83)
    assert field_of_view_arcmin(resolver.resolve("IC 1101")) == pytest.approx(1.8)
    unsized = CatalogObject(name="X", type="G", type_name="Galaxy", ra_deg=1.0, dec_deg=2.0)
    assert field_of_view_arcmin(unsized) == DEFAULT_FOV_ARCMIN
    assert unsized.axis_ratio is None and unsized.classical_inclination_deg() is None


def test_classical_inclination_baseline(resolver: Resolver) -> None:
    m31 = resolver.resolve("M31")
    # q = 0.392, q0 = 0.2: cos² i = (0.1534 − 0.04) / 0.96 → i ≈ 69.9°
    assert m31.classical_inclination_deg() == pytest.approx(69.9, abs=0.2)


def test_resolver_is_cached_and_lazy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert get_resolver() is get_resolver()
    missing = Resolver(tmp_path / "none.db")  # constructing reads nothing
    with pytest.raises(FileNotFoundError):
        missing.resolve("M31")
