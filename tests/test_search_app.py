"""The local search web app: JSON API and its limits, videos by id with HTTP Range, nothing outside the indexed
folder, port in use, and a real headless Chromium typing a caption, playing a hit from its window's start."""

import http.client
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import make_video
from search_corpus import COLOURS, caption, colour_folder, colour_run, relative_name

from mmpt_lite.search import cli
from mmpt_lite.search.index import IndexRun, update_index
from mmpt_lite.search.model import default_protocol, load_search_model
from mmpt_lite.search.query import SearchIndex
from mmpt_lite.search.server import MAX_QUERY_CHARS, make_server, parse_range

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
HOSTILE_RED = '<img src=x onerror="window.pwned=1">red.mp4'  # a legal file name, and markup if ever parsed


def start_server(index: SearchIndex):
    server = make_server(index, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def stop_server(server) -> None:
    server.shutdown()
    server.server_close()


def build(tmp: Path, run: Path) -> tuple[Path, SearchIndex]:
    """Colour videos with the red one under a hostile name, indexed; (video folder, loaded index)."""
    videos = colour_folder(tmp / "videos", colours=[c for c in COLOURS if c != "red"])
    make_video(videos / HOSTILE_RED, "red", seconds=5.0, fps=10, size="64x48")
    loaded, record = load_search_model(run)
    update_index(videos, tmp / "index", loaded, record, default_protocol(loaded), IndexRun(num_workers=0, progress=False))
    return videos, SearchIndex(tmp / "index")


def request(server, path: str, headers: dict | None = None, method: str = "GET"):
    """(status, headers, body) of one raw request: the path is sent exactly as given (no client normalisation)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        connection.request(method, path, headers={"Host": f"127.0.0.1:{server.server_address[1]}", **(headers or {})})
        reply = connection.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    run = colour_run(tmp_path_factory)
    videos, index = build(tmp_path_factory.mktemp("search_app"), run)
    server = start_server(index)
    yield videos, index, server
    stop_server(server)


def test_search_api_answers_json_and_refuses_bad_queries(app):
    videos, index, server = app
    status, headers, body = request(server, "/api/search?q=a+red+screen&k=2")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    reply = json.loads(body)
    assert [hit["rank"] for hit in reply["results"]] == [1, 2] and reply["results"][0]["file"] == HOSTILE_RED
    hit = reply["results"][0]
    assert index.files[hit["file_id"]] == HOSTILE_RED and 0 <= hit["start"] < hit["end"]
    windows = json.loads(request(server, "/api/search?q=a+red+screen&k=3&per_file=0")[2])["results"]
    assert [w["file"] for w in windows] == [HOSTILE_RED] * 3  # every red window beats every other video

    long_query = "red " * (MAX_QUERY_CHARS // 4) + "x"
    for query, expected in ((f"q={long_query}&k=2", f"at most {MAX_QUERY_CHARS}"), ("q=&k=2", "empty query"),
                            ("k=2", "empty query"), ("q=red&k=0", "between 1 and"), ("q=red&k=51", "between 1 and"),
                            ("q=red&k=ten", "whole number")):
        status, _, body = request(server, "/api/search?" + query.replace(" ", "+"))
        assert status == 400 and expected in json.loads(body)["error"], (query, body)
    info = json.loads(request(server, "/api/info")[2])
    assert info["files"] == len(COLOURS) and info["windows"] == index.num_windows


def test_videos_are_served_by_id_with_byte_ranges(app):
    videos, index, server = app
    file_id = index.files.index(HOSTILE_RED)
    data = (videos / HOSTILE_RED).read_bytes()
    status, headers, body = request(server, f"/video/{file_id}")
    assert status == 200 and body == data and headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Type"] == "video/mp4"
    status, headers, body = request(server, f"/video/{file_id}", {"Range": "bytes=100-299"})
    assert status == 206 and body == data[100:300] and headers["Content-Range"] == f"bytes 100-299/{len(data)}"
    status, headers, body = request(server, f"/video/{file_id}", {"Range": "bytes=-50"})
    assert status == 206 and body == data[-50:]
    status, headers, body = request(server, f"/video/{file_id}", {"Range": f"bytes={len(data) - 10}-"})
    assert status == 206 and body == data[-10:]
    status, headers, _ = request(server, f"/video/{file_id}", {"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    status, headers, body = request(server, f"/video/{file_id}", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(data)
    assert parse_range("bytes=0-1,5-6", 10) is None and parse_range("items=0-1", 10) is None  # ignored: whole file
    status, headers, body = request(server, "/thumb/0.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"


def test_nothing_outside_the_indexed_folder_can_be_fetched(tmp_path_factory, tmp_path):
    secret = tmp_path / "secret.mp4"
    make_video(secret, "white", seconds=1.0)
    videos, index = build(tmp_path, colour_run(tmp_path_factory))
    server = start_server(index)
    try:
        passwd = "/etc/passwd"
        for path in ("/video/../../../../etc/passwd", "/video/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                     f"/video/{passwd}", f"/video/{secret}", "/video//etc/passwd", "/video/0/../../../../etc/passwd",
                     "/video/%2fetc%2fpasswd", "/thumb/../../etc/passwd", "/video/-1", f"/video/{len(index.files)}",
                     "/video/0x1", "/../../etc/passwd", f"/{secret}"):
            status, _, body = request(server, path)
            assert status == 404 and b"root:" not in body, (path, status)
        status, _, _ = request(server, "/", {"Host": "attacker.example"})
        assert status == 403  # DNS rebinding: a page from elsewhere cannot talk to the loopback app

        # an indexed file replaced by a symlink that leads out of the folder is refused, video and thumbnail
        file_id = index.files.index("cyan.mp4")
        window_id = next(i for i, row in enumerate(index.snapshot.rows) if row.file == "cyan.mp4")
        assert request(server, f"/video/{file_id}")[0] == 200
        (videos / "cyan.mp4").unlink()
        (videos / "cyan.mp4").symlink_to(secret)
        assert request(server, f"/video/{file_id}")[0] == 404
        assert request(server, f"/thumb/{window_id}.jpg")[0] == 404
        (videos / "cyan.mp4").unlink()
        (videos / "cyan.mp4").symlink_to(videos / HOSTILE_RED)  # a link that stays inside is fine
        assert request(server, f"/video/{file_id}")[2] == (videos / HOSTILE_RED).read_bytes()
    finally:
        stop_server(server)


def test_a_port_in_use_is_one_line_and_status_2(app, capsys):
    _, index, server = app
    status = cli.serve_main([str(index.folder), "--port", str(server.server_address[1])])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert err == f"mmpt-lite serve: error: port {server.server_address[1]} on 127.0.0.1 is in use; pick another with --port"


def test_serve_command_prints_its_address_serves_and_stops_on_ctrl_c(app):
    _, index, _ = app
    proc = subprocess.Popen([sys.executable, "-m", "mmpt_lite.search.cli", "serve", str(index.folder), "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "serve printed nothing in 120 s"
        line = proc.stdout.readline()
        match = re.search(r"at http://127\.0\.0\.1:(\d+)/ ", line)
        assert match and f"({len(COLOURS)} files, {index.num_windows} windows)" in line, line
        connection = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=30)
        connection.request("GET", "/api/search?q=a+blue+screen&k=1")
        reply = connection.getresponse()
        assert reply.status == 200 and json.loads(reply.read())["results"][0]["file"] == relative_name("blue")
        connection.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium and /usr/bin/chromedriver "
                    "(apt-get install chromium chromium-driver; CI installs them)")
def test_a_browser_types_a_caption_sees_the_video_and_plays_it_from_the_span(app):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, index, server = app
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    wait = WebDriverWait(driver, 30)
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")

        def search(text: str, k: int, per_file: bool) -> list:
            box, top = driver.find_element(By.ID, "q"), driver.find_element(By.ID, "k")
            box.clear()
            box.send_keys(text)
            top.clear()
            top.send_keys(str(k))
            if driver.find_element(By.ID, "per-file").is_selected() != per_file:
                driver.find_element(By.ID, "per-file").click()
            driver.execute_script("document.getElementById('results').dataset.done = ''")
            driver.find_element(By.ID, "go").click()
            wait.until(lambda d: d.execute_script("return document.getElementById('results').dataset.done === '1'"))
            return driver.find_elements(By.CSS_SELECTOR, "#results li")

        # six videos, top 2: the caption's own video (under its hostile name, shown as text) comes first
        hits = search(caption("red"), 2, per_file=True)
        assert len(hits) == 2
        assert hits[0].find_element(By.CLASS_NAME, "file").text == HOSTILE_RED
        assert driver.execute_script("return window.pwned") is None
        assert not driver.find_elements(By.CSS_SELECTOR, "#results img:not(.strip)")
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))

        # the red video's windows; play the latest one and check the player seeks to its start
        hits = search(caption("red"), 4, per_file=False)
        starts = [float(hit.get_attribute("data-start")) for hit in hits]
        assert len(hits) == 4 and max(starts) > 0
        hit = hits[starts.index(max(starts))]
        start, end = float(hit.get_attribute("data-start")), float(hit.get_attribute("data-end"))
        hit.click()
        wait.until(lambda d: d.execute_script(
            "const p = document.getElementById('player'); return p.readyState >= 2 && p.currentTime > 0"))
        current = driver.execute_script("return document.getElementById('player').currentTime")
        assert start - 0.05 <= current <= end + 0.25, (start, end, current)
        source, fragment = driver.execute_script("return document.getElementById('player').src").split("#t=")
        assert source.endswith(f"/video/{index.files.index(HOSTILE_RED)}")
        assert [float(x) for x in fragment.split(",")] == [start, end]
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
