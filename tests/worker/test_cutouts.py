"""Cutout providers against a real HTTP server on 127.0.0.1, a real archive folder, and
orientation checked on synthetic ellipses drawn at known position angles."""

from __future__ import annotations

import hashlib
import io
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from services.worker.cutouts import (
    CUTOUT_PRESETS,
    HttpCutoutProvider,
    LocalArchiveProvider,
    fetch_oriented_cutout,
    host_allowed,
    provider_from_settings,
)
from shared.errors import (
    CutoutUnavailable,
    HostNotAllowed,
    ImageTooLarge,
    InvalidImage,
    UnsupportedMediaType,
)
from services.worker.orientation import (
    encode_png,
    orient_cutout,
    orient_pixels,
    padded_fov_arcmin,
    rotation_angle_deg,
)
from services.worker.settings import WorkerSettings
from tests.helpers.images import encode, png_bytes

# --------------------------------------------------------------------------- a real server


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "image/png"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class SkyServer:
    """A threaded HTTP server whose replies are scripted per path; it records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append(self.path)
                    replies = server.routes.get(urlsplit(self.path).path, [Reply(status=404)])
                    reply = replies.pop(0) if len(replies) > 1 else replies[0]
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to do

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def reset(self) -> None:
        with self._lock:
            self.routes.clear()
            self.requests.clear()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def _server() -> Iterator[SkyServer]:
    server = SkyServer()
    yield server
    server.close()


@pytest.fixture
def server(_server: SkyServer) -> SkyServer:
    _server.reset()
    return _server


def galaxy_png(size: int = 96, *, pa_deg: float = 35.0, axis_ratio: float = 0.3) -> bytes:
    return encode(draw_ellipse(size, pa_deg=pa_deg, axis_ratio=axis_ratio))


def provider(server: SkyServer, path: str = "/cutout", **kwargs: object) -> HttpCutoutProvider:
    template = server.url(path) + "?ra={ra}&dec={dec}&scale={scale}&width={size}&height={size}"
    options: dict[str, object] = {
        "allowed_hosts": ["127.0.0.1"],
        "timeout_s": 2.0,
        "retries": 2,
        "backoff_s": 0.01,
        "allow_private_addresses": True,  # the stand-in listens on loopback
    }
    options.update(kwargs)
    return HttpCutoutProvider(template + "&name={name}", **options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- HTTP provider


def test_template_is_filled_and_the_image_returned(server: SkyServer) -> None:
    image = galaxy_png()
    server.routes["/cutout"] = [Reply(body=image)]
    with provider(server, pixels=256) as cutouts:
        data = cutouts.fetch(10.6848, 41.2689, 2.0, name="NGC 224")
    assert data == image
    [request] = server.requests
    query = parse_qs(urlsplit(request).query)
    assert query == {
        "ra": ["10.6848"],
        "dec": ["41.2689"],
        "scale": ["0.46875"],  # 2′ · 60 / 256 px
        "width": ["256"],
        "height": ["256"],
        "name": ["NGC 224"],
    }


def test_presets_point_at_sdss_and_the_legacy_survey() -> None:
    sdss = HttpCutoutProvider.from_preset("sdss")
    legacy = HttpCutoutProvider.from_preset("legacy", pixels=128)
    try:
        assert sdss.allowed_hosts == ("skyserver.sdss.org",)
        assert sdss.url_for(10.6848, -41.2689, 4.0) == (
            "https://skyserver.sdss.org/dr18/SkyServerWS/ImgCutout/getjpeg"
            "?ra=10.6848&dec=-41.2689&scale=0.9375&width=256&height=256"
        )
        assert legacy.url_for(10.6848, 41.2689, 4.0) == (
            "https://www.legacysurvey.org/viewer/cutout.jpg"
            "?ra=10.6848&dec=41.2689&layer=ls-dr10&pixscale=1.875&size=128"
        )
    finally:
        sdss.close()
        legacy.close()
    assert set(CUTOUT_PRESETS) == {"sdss", "legacy"}


def test_bad_templates_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown placeholder"):
        HttpCutoutProvider("https://x.org/c?ra={ra}&band={band}")
    with pytest.raises(ValueError, match="not in the allowlist"):
        HttpCutoutProvider("https://x.org/c?ra={ra}", allowed_hosts=["y.org"])
    with pytest.raises(ValueError, match="http"):
        HttpCutoutProvider("ftp://x.org/c?ra={ra}")


def test_the_disk_cache_prevents_a_second_request(server: SkyServer, tmp_path: Path) -> None:
    image = galaxy_png()
    server.routes["/cutout"] = [Reply(body=image)]
    with provider(server, cache_dir=tmp_path / "cache") as cutouts:
        first = cutouts.fetch(150.1, 2.2, 1.5)
        second = cutouts.fetch(150.1, 2.2, 1.5)
        assert first == second == image
        assert len(server.requests) == 1
        url = cutouts.url_for(150.1, 2.2, 1.5)
    cached = tmp_path / "cache" / f"{hashlib.sha256(url.encode()).hexdigest()}.img"
    assert cached.read_bytes() == image
    with provider(server, cache_dir=tmp_path / "cache") as fresh:  # another process, same disk
        fresh.fetch(150.1, 2.2, 1.5)
        fresh.fetch(150.1, 2.2, 3.0)  # another field is another URL
    assert len(server.requests) == 2


def test_a_host_off_the_allowlist_is_refused_without_any_request(server: SkyServer) -> None:
    server.routes["/img.png"] = [Reply(body=galaxy_png())]
    with provider(server) as cutouts:
        with pytest.raises(HostNotAllowed) as info:
            cutouts.fetch_url(server.url("/img.png", host="localhost"))
        assert info.value.status == 422
        assert "localhost" in info.value.detail
        for url in ("file:///etc/passwd", f"http://user:pw@127.0.0.1:{server.port}/img.png"):
            with pytest.raises(HostNotAllowed):
                cutouts.fetch_url(url)
        assert cutouts.fetch_url(server.url("/img.png"))  # the allowed host works
    assert server.requests == ["/img.png"]


def test_a_redirect_to_another_host_is_refused(server: SkyServer) -> None:
    # "localhost" is this very server, so following the redirect would show up below.
    server.routes["/cutout"] = [
        Reply(status=302, headers={"Location": server.url("/img.png", host="localhost")})
    ]
    server.routes["/img.png"] = [Reply(body=galaxy_png())]
    with provider(server) as cutouts:
        with pytest.raises(CutoutUnavailable, match="redirect") as info:
            cutouts.fetch(10.0, 20.0, 1.0)
        assert info.value.status == 424
        with pytest.raises(HostNotAllowed, match="redirect"):
            cutouts.fetch_url(server.url("/cutout"))
    assert [urlsplit(r).path for r in server.requests] == ["/cutout", "/cutout"]


def test_a_redirect_within_the_allowlist_is_followed(server: SkyServer) -> None:
    image = galaxy_png()
    server.routes["/cutout"] = [Reply(status=301, headers={"Location": "/moved.png"})]
    server.routes["/moved.png"] = [Reply(body=image)]
    with provider(server) as cutouts:
        assert cutouts.fetch(10.0, 20.0, 1.0) == image
    assert [urlsplit(r).path for r in server.requests] == ["/cutout", "/moved.png"]


def test_a_server_slower_than_the_timeout_ends_unavailable_after_bounded_retries(
    server: SkyServer,
) -> None:
    server.routes["/cutout"] = [Reply(body=galaxy_png(), delay_s=0.5)]
    started = time.monotonic()
    with (
        provider(server, timeout_s=0.05, retries=2, backoff_s=0.01) as cutouts,
        pytest.raises(CutoutUnavailable) as info,
    ):
        cutouts.fetch(10.0, 20.0, 1.0)
    elapsed = time.monotonic() - started
    assert len(server.requests) == 3  # one try plus two retries, no more
    assert "127.0.0.1" in info.value.detail and "no answer within 0.05 s" in info.value.detail
    assert "3 times" in info.value.detail
    assert info.value.extra["attempts"] == 3
    assert elapsed < 1.0  # 3 × 0.05 s timeouts + 0.03 s back-off, with slack


def test_a_refused_connection_is_retried_then_unavailable() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]  # bound, then closed below: nothing listens
    cutouts = HttpCutoutProvider(
        f"http://127.0.0.1:{port}/c?ra={{ra}}",
        ["127.0.0.1"],
        timeout_s=0.5,
        retries=1,
        backoff_s=0.0,
        allow_private_addresses=True,
    )
    with cutouts, pytest.raises(CutoutUnavailable, match=r"connection failed.*2 times"):
        cutouts.fetch(1.0, 2.0, 1.0)


def test_a_500_then_a_200_succeeds_through_the_retry(server: SkyServer) -> None:
    image = galaxy_png()
    server.routes["/cutout"] = [
        Reply(status=500, body=b"oops", content_type="text/plain"),
        Reply(body=image),
    ]
    with provider(server) as cutouts:
        assert cutouts.fetch(10.0, 20.0, 1.0) == image
    assert len(server.requests) == 2


def test_client_errors_are_not_retried(server: SkyServer) -> None:
    server.routes["/cutout"] = [Reply(status=404, body=b"no", content_type="text/plain")]
    with provider(server) as cutouts, pytest.raises(CutoutUnavailable, match="HTTP 404"):
        cutouts.fetch(10.0, 20.0, 1.0)
    assert len(server.requests) == 1


def test_a_non_image_body_is_rejected_and_not_cached(server: SkyServer, tmp_path: Path) -> None:
    server.routes["/cutout"] = [
        Reply(body=b"<html>Service unavailable</html>", content_type="text/html")
    ]
    server.routes["/fake.jpg"] = [Reply(body=b"not really a jpeg", content_type="image/jpeg")]
    with provider(server, cache_dir=tmp_path) as cutouts:
        with pytest.raises(CutoutUnavailable, match="text/html, not an image"):
            cutouts.fetch(10.0, 20.0, 1.0)
        with pytest.raises(UnsupportedMediaType):
            cutouts.fetch_url(server.url("/cutout"))
        with pytest.raises((UnsupportedMediaType, InvalidImage)):
            cutouts.fetch_url(server.url("/fake.jpg"))
    assert len(server.requests) == 3  # a bad body is not retried
    assert list(tmp_path.iterdir()) == []


def test_the_response_size_is_capped(server: SkyServer) -> None:
    server.routes["/big.png"] = [Reply(body=png_bytes(256))]
    with provider(server, max_bytes=1000) as cutouts, pytest.raises(ImageTooLarge, match="limit"):
        cutouts.fetch_url(server.url("/big.png"))


def test_a_fits_cutout_is_accepted(server: SkyServer) -> None:
    buf = io.BytesIO()
    fits.PrimaryHDU(np.random.default_rng(1).normal(size=(32, 32)).astype(np.float32)).writeto(buf)
    server.routes["/cutout"] = [Reply(body=buf.getvalue(), content_type="application/fits")]
    with provider(server) as cutouts:
        assert cutouts.fetch(1.0, 2.0, 1.0).startswith(b"SIMPLE  =")


@pytest.mark.parametrize(
    ("host", "port", "allowed", "ok"),
    [
        ("skyserver.sdss.org", 443, ["skyserver.sdss.org"], True),
        ("SkyServer.SDSS.org.", 443, ["skyserver.sdss.org"], True),
        ("evil.org", 443, ["skyserver.sdss.org"], False),
        ("skyserver.sdss.org.evil.org", 443, ["skyserver.sdss.org"], False),
        ("a.legacysurvey.org", 443, ["*.legacysurvey.org"], True),
        ("legacysurvey.org.evil.org", 443, ["*.legacysurvey.org"], False),
        ("127.0.0.1", 8080, ["127.0.0.1:8080"], True),
        ("127.0.0.1", 8081, ["127.0.0.1:8080"], False),
        (None, None, ["x.org"], False),
    ],
)
def test_host_allowlist_matching(
    host: str | None, port: int | None, allowed: list[str], ok: bool
) -> None:
    assert host_allowed(host, port, allowed) is ok


# --------------------------------------------------------------------------- local archive


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    folder = tmp_path / "archive"
    (folder / "fields").mkdir(parents=True)
    (folder / "NGC0224.png").write_bytes(galaxy_png(pa_deg=35))
    (folder / "ngc5866.jpg").write_bytes(encode(draw_ellipse(64, pa_deg=126), "JPEG"))
    fits.PrimaryHDU(np.ones((16, 16), dtype=np.float32)).writeto(folder / "M33.fits")
    (folder / "fields" / "cosmos.png").write_bytes(png_bytes(48))
    (folder / "notes.txt").write_text("not an image")
    (folder / "index.csv").write_text("file,ra,dec\nfields/cosmos.png,150.1,2.2\n")
    return folder


def test_the_archive_finds_files_by_normalised_name(archive: Path) -> None:
    local = LocalArchiveProvider(archive)
    assert local.fetch(10.68, 41.27, 4.0, name="NGC 224") == (archive / "NGC0224.png").read_bytes()
    assert local.fetch(0, 0, 1.0, name="NGC5866") == (archive / "ngc5866.jpg").read_bytes()
    # The catalog name has no file, an alias does: M33 is NGC 598.
    found = local.fetch(23.46, 30.66, 90.0, name="NGC0598", aliases=["M33", "PGC 5818"])
    assert found.startswith(b"SIMPLE  =")


def test_the_archive_finds_files_by_position_within_the_field(archive: Path) -> None:
    local = LocalArchiveProvider(archive)
    expected = (archive / "fields" / "cosmos.png").read_bytes()
    assert local.fetch(150.1 + 0.5 / 60, 2.2, 2.0) == expected  # 0.5′ off, field 2′
    with pytest.raises(CutoutUnavailable, match=r"no file named NGC1.*within 0\.50′"):
        local.fetch(150.1 + 3.0 / 60, 2.2, 1.0, name="NGC 1")
    assert local.nearest(150.1, 2.2, max_arcmin=0.1) is not None


def test_the_archive_index_is_checked(archive: Path) -> None:
    (archive / "index.csv").write_text("file,ra,dec\n../../secret.png,1,2\n")
    with pytest.raises(ValueError, match="outside the archive"):
        LocalArchiveProvider(archive)
    (archive / "index.csv").write_text("file,ra\nx.png,1\n")
    with pytest.raises(ValueError, match="dec"):
        LocalArchiveProvider(archive)


def test_providers_from_settings(archive: Path, tmp_path: Path) -> None:
    local = provider_from_settings(
        WorkerSettings(cutout_provider="local", cutout_archive_dir=archive)
    )
    assert isinstance(local, LocalArchiveProvider)
    http = provider_from_settings(
        WorkerSettings(cutout_provider="legacy", cutout_cache_dir=tmp_path, cutout_retries=0)
    )
    assert isinstance(http, HttpCutoutProvider)
    assert http.url_template == CUTOUT_PRESETS["legacy"] and http.retries == 0
    http.close()
    assert provider_from_settings(WorkerSettings(cutout_provider="none")) is None
    with pytest.raises(ValueError, match="ARCHIVE_DIR"):
        provider_from_settings(WorkerSettings(cutout_provider="local"))


def test_allowed_hosts_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYSERVE_CUTOUT_ALLOWED_HOSTS", "skyserver.sdss.org, *.example.org")
    assert WorkerSettings().cutout_allowed_hosts == ["skyserver.sdss.org", "*.example.org"]
    monkeypatch.setenv("SKYSERVE_CUTOUT_ALLOWED_HOSTS", '["a.org"]')
    assert WorkerSettings().cutout_allowed_hosts == ["a.org"]


# --------------------------------------------------------------------------- orientation


def draw_ellipse(
    size: int, *, pa_deg: float, axis_ratio: float = 0.3, east_left: bool = True
) -> np.ndarray:
    """A sharp ellipse with its major axis at ``pa_deg`` east of north, north up.

    In (column → right, row → down) pixels, north is (0, −1) and east is (−1, 0) when
    east is left, so the major axis runs along (−sin PA, −cos PA).
    """
    theta = math.radians(pa_deg)
    east = -1.0 if east_left else 1.0
    major = np.array([east * math.sin(theta), -math.cos(theta)])
    minor = np.array([-major[1], major[0]])
    rows, cols = np.mgrid[:size, :size] - (size - 1) / 2
    u = cols * major[0] + rows * major[1]
    v = cols * minor[0] + rows * minor[1]
    a = size * 0.3
    inside = (u / a) ** 2 + (v / (a * axis_ratio)) ** 2 <= 1.0
    return np.repeat((inside * 255).astype(np.uint8)[..., None], 3, axis=-1)


def major_axis_angle(png: bytes) -> tuple[float, float]:
    """Angle of the bright blob's major axis from horizontal (degrees) and its elongation."""
    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    rows, cols = np.nonzero(grey > 127)
    cov = np.cov(np.vstack([cols - cols.mean(), rows - rows.mean()]))
    values, vectors = np.linalg.eigh(cov)
    along = vectors[:, np.argmax(values)]
    angle = math.degrees(math.atan2(along[1], along[0]))
    angle = (angle + 90.0) % 180.0 - 90.0
    return angle, math.sqrt(values.max() / values.min())


def axis_difference(a_deg: float, b_deg: float) -> float:
    """Smallest angle between two undirected axes."""
    d = (a_deg - b_deg) % 180.0
    return min(d, 180.0 - d)


@pytest.mark.parametrize("pa", [0.0, 35.0, 90.0, 126.0, 170.0, 215.0])
def test_rotation_puts_the_major_axis_horizontal(pa: float) -> None:
    # The drawing is right: on screen (y up) the axis lies 90° + PA from +x; rows run
    # down, so measured in pixel rows the angle changes sign.
    before, _ = major_axis_angle(encode(draw_ellipse(128, pa_deg=pa)))
    assert axis_difference(before, -(90.0 + pa)) < 2.0
    png = orient_cutout(draw_ellipse(128, pa_deg=pa), pa, fov_arcmin=2.0)
    angle, elongation = major_axis_angle(png)
    assert abs(angle) < 2.0
    assert elongation == pytest.approx(1 / 0.3, rel=0.1)


def test_an_east_right_image_turns_the_other_way() -> None:
    image = draw_ellipse(128, pa_deg=35.0, east_left=False)
    angle, _ = major_axis_angle(orient_cutout(image, 35.0, 2.0, east_left=False))
    assert abs(angle) < 2.0
    wrong, _ = major_axis_angle(orient_cutout(image, 35.0, 2.0))  # the other convention fails
    assert abs(wrong) > 45.0


def test_crop_and_resize_follow_the_fields() -> None:
    image = draw_ellipse(256, pa_deg=60.0)
    png = orient_cutout(image, 60.0, 2.0, image_fov_arcmin=padded_fov_arcmin(2.0))
    assert Image.open(io.BytesIO(png)).size == (181, 181)  # 256 / √2
    png = orient_cutout(encode(image), 60.0, 2.0, image_fov_arcmin=4.0, pixels=64)
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    assert rotation_angle_deg(None) == 0.0 and rotation_angle_deg(90.0) == 0.0
    assert rotation_angle_deg(35.0) == 55.0 and rotation_angle_deg(35.0, east_left=False) == -55.0


def test_fetch_oriented_cutout_end_to_end(server: SkyServer) -> None:
    # The "survey" returns M31 as it looks on the sky (PA 35°, north up, east left).
    server.routes["/cutout"] = [Reply(body=galaxy_png(256, pa_deg=35.0))]
    with provider(server) as cutouts:
        pixels = fetch_oriented_cutout(cutouts, 10.6848, 41.2689, 266.7, pa_deg=35.0, pixels=128)
    assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8
    angle, _ = major_axis_angle(encode_png(pixels))
    assert abs(angle) < 2.0
    query = parse_qs(urlsplit(server.requests[0]).query)
    # √2-padded field: 266.7′ · √2 · 60 / 256 px
    assert float(query["scale"][0]) == pytest.approx(266.7 * math.sqrt(2) * 60 / 256, rel=1e-5)


# --------------------------------------------------------------------------- issue 8: addresses


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.169.254", "0.0.0.0",
     "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "224.0.0.1", "100.64.0.1"],
)
def test_private_loopback_and_link_local_addresses_are_refused(address: str) -> None:
    from services.worker.cutouts import check_address

    with pytest.raises(HostNotAllowed, match="private, loopback or link-local"):
        check_address(address, allow_private=False)
    check_address(address, allow_private=True)  # a deployment may allow them on purpose
    check_address("8.8.8.8", allow_private=False)
    check_address("2606:4700:4700::1111", allow_private=False)


def test_an_allowlisted_host_on_loopback_is_refused_without_the_setting(server: SkyServer) -> None:
    server.routes["/cutout"] = [Reply(body=galaxy_png())]
    with provider(server, allow_private_addresses=False) as cutouts:
        with pytest.raises(CutoutUnavailable, match="private, loopback"):
            cutouts.fetch(10.0, 20.0, 1.0)
        with pytest.raises(HostNotAllowed, match="private, loopback"):
            cutouts.fetch_url(server.url("/cutout"))
    assert server.requests == []  # refused before any connection


def test_the_connection_goes_to_the_address_that_was_checked(
    server: SkyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name is resolved once, checked, and that address is connected to."""
    import socket

    real = socket.getaddrinfo
    answers = iter(["8.8.8.8", "127.0.0.1"])  # public when checked, loopback afterwards
    calls: list[str] = []

    def rebinding(host: str, *args: object, **kwargs: object) -> list:
        if host == "sky.example.org":
            address = next(answers)
            calls.append(address)
            return real(address, *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = urlsplit(server.url("/")).port
    with HttpCutoutProvider(
        f"http://sky.example.org:{port}/cutout?ra={{ra}}", ["sky.example.org"],
        timeout_s=0.3, retries=0,
    ) as cutouts:
        # Checked as 8.8.8.8 (public) and connected to 8.8.8.8: never to the loopback the
        # second lookup would give. (8.8.8.8 does not serve this port: a timeout, no leak.)
        with pytest.raises(CutoutUnavailable):
            cutouts.fetch(1.0, 2.0, 1.0)
    assert calls == ["8.8.8.8"] and server.requests == []


def test_a_name_resolved_to_an_allowed_address_is_served_from_it(server: SkyServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket, "getaddrinfo",
        lambda host, *a, **k: real("127.0.0.1" if host == "sky.example.org" else host, *a, **k),
    )
    server.routes["/cutout"] = [Reply(body=galaxy_png())]
    port = urlsplit(server.url("/")).port
    with HttpCutoutProvider(
        f"http://sky.example.org:{port}/cutout?ra={{ra}}", ["sky.example.org"],
        allow_private_addresses=True,
    ) as cutouts:
        assert cutouts.fetch(1.0, 2.0, 1.0) == galaxy_png()
    assert len(server.requests) == 1


def test_a_non_image_body_is_never_echoed(server: SkyServer) -> None:
    secret = b"<html>internal admin page: password=hunter2</html>"
    server.routes["/page"] = [Reply(body=secret, content_type="text/html")]
    with provider(server) as cutouts, pytest.raises(UnsupportedMediaType) as info:
        cutouts.fetch_url(server.url("/page"))
    problem = str(info.value.to_problem())
    assert "hunter2" not in problem and "admin page" not in problem
