"""The loopback server: static files, routes, and nothing outside its folder."""

from __future__ import annotations

import json

import requests

from dermcan.loopback_server import serve_site


def _write_site(root):
    (root / "index.html").write_text("<html><body>hello</body></html>", encoding="utf-8")
    (root / "img").mkdir()
    (root / "img" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0fake")
    (root / "fake.jpg").write_text("<html>not an image</html>", encoding="utf-8")
    routes = {
        "redirects": {"/r1": "/r2", "/r2": "/img/a.jpg", "/loop": "/loop"},
        "content_types": {"/fake.jpg": "image/jpeg"},
        "statuses": {"/busy.jpg": 503},
        "delays": {"/slow": 0.3},
    }
    (root / "_routes.json").write_text(json.dumps(routes), encoding="utf-8")


def test_serves_files_and_index(tmp_path):
    _write_site(tmp_path)
    with serve_site(tmp_path) as site:
        assert site.base_url.startswith("http://127.0.0.1:")
        page = requests.get(site.url("/"), timeout=5)
        image = requests.get(site.url("/img/a.jpg"), timeout=5)
    assert page.status_code == 200
    assert "hello" in page.text
    assert image.headers["Content-Type"] == "image/jpeg"
    assert image.content == b"\xff\xd8\xff\xe0fake"


def test_routes_redirect_status_and_type(tmp_path):
    _write_site(tmp_path)
    with serve_site(tmp_path) as site:
        chain = requests.get(site.url("/r1"), timeout=5)
        busy = requests.get(site.url("/busy.jpg"), timeout=5)
        fake = requests.get(site.url("/fake.jpg"), timeout=5)
        loop = requests.Session()
        loop.max_redirects = 5
        try:
            loop.get(site.url("/loop"), timeout=5)
            looped = False
        except requests.TooManyRedirects:
            looped = True
    assert chain.status_code == 200
    assert [r.status_code for r in chain.history] == [302, 302]
    assert busy.status_code == 503
    assert fake.headers["Content-Type"] == "image/jpeg"
    assert fake.content.startswith(b"<html>")
    assert looped


def test_routes_file_and_parent_are_not_served(tmp_path):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    _write_site(site_dir)
    (tmp_path / "secret.json").write_text("{}", encoding="utf-8")
    with serve_site(site_dir) as site:
        routes = requests.get(site.url("/_routes.json"), timeout=5)
        parent = requests.get(site.url("/../secret.json"), timeout=5)
        encoded = requests.get(site.url("/%2e%2e/secret.json"), timeout=5)
        requested = site.requests
    assert routes.status_code == 404
    assert parent.status_code == 404
    assert encoded.status_code == 404
    assert "/_routes.json" in requested
