"""A screenshot of a layout on a segment in Lichtblick (Foxglove Studio's open-source fork), headless.

Serves a built Lichtblick web app (see build_lichtblick.sh) with the layout put in as its default layout, the way
Lichtblick's Docker image does, and the segment with HTTP Range requests (Lichtblick's remote-file source reads by
range), from one local server; opens `/?ds=remote-file&ds.url=<segment>&time=<its last message>` in the system
Chromium through Playwright, and writes a PNG once the plots have stopped changing.

    python tools/foxglove/screenshot.py --app-dir lichtblick/web/.webpack \
        --layout tools/foxglove/segment_layout.json --segment data/swingup/000001.mcap --out docs/foxglove_segment.png

Needs `pip install playwright` (no `playwright install`: it drives the system's chromium) and a Chromium
(`apt-get install chromium`). Not part of mpq itself: it makes the README's picture.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import http.server
import json
import threading
import time
import urllib.parse
from pathlib import Path

from mcap.reader import make_reader

PLACEHOLDER = b"/*LICHTBLICK_SUITE_DEFAULT_LAYOUT_PLACEHOLDER*/"  # in Lichtblick's index.html


class Handler(http.server.SimpleHTTPRequestHandler):
    """The app's files; its index.html with the layout in; the segment, whole or by range."""

    def __init__(self, *args, index_html: bytes, segment: Path, **kwargs):
        self.index_html, self.segment = index_html, segment
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Expose-Headers", "Accept-Ranges, Content-Length, Content-Range")
        super().end_headers()

    def do_GET(self):
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        if path in ("/", "/index.html"):
            return self.send(200, self.index_html, "text/html")
        if path == "/" + self.segment.name:
            return self.send_segment()
        return super().do_GET()

    def send(self, code: int, body: bytes, content_type: str, headers=()):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # Lichtblick aborts its first GET, which only asks the size, on purpose

    def send_segment(self):
        data = self.segment.read_bytes()
        size, wanted = len(data), self.headers.get("Range")
        headers = [("Accept-Ranges", "bytes"), ("Cache-Control", "no-store")]
        if not wanted:
            return self.send(200, data, "application/octet-stream", headers)
        start, _, end = wanted.removeprefix("bytes=").partition("-")
        start, end = int(start or 0), min(int(end) if end else size - 1, size - 1)
        headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        self.send(206, data[start : end + 1], "application/octet-stream", headers)


def rfc3339(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"


def screenshot(app_dir: Path, layout: Path, segment: Path, out: Path, size: str, chromium: str, timeout: float):
    from playwright.sync_api import sync_playwright  # only this tool needs it

    index_html = (app_dir / "index.html").read_bytes()
    if PLACEHOLDER not in index_html:
        raise SystemExit(f"{app_dir}/index.html has no default-layout placeholder: give the built Lichtblick web app")
    index_html = index_html.replace(PLACEHOLDER, json.dumps(json.loads(layout.read_text())).encode())
    with segment.open("rb") as f:
        end_ns = make_reader(f).get_summary().statistics.message_end_time
    handler = functools.partial(Handler, directory=str(app_dir), index_html=index_html, segment=segment)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    query = {"ds": "remote-file", "ds.url": f"{base}/{urllib.parse.quote(segment.name)}", "time": rfc3339(end_ns)}
    width, height = map(int, size.split("x"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.on("console", lambda m: m.type == "error" and print("Lichtblick:", m.text[:300]))  # its data problems
        closed = {"item": None, "open": False, "size": None}  # both sidebars shut (its localStorage "fox.workspace")
        workspace = {"state": {"sidebars": {"left": closed, "right": closed}}, "version": 1}
        page.add_init_script(f"localStorage.setItem('fox.workspace', {json.dumps(json.dumps(workspace))})")
        page.goto(f"{base}/?{urllib.parse.urlencode(query)}")
        page.wait_for_selector("canvas", timeout=timeout * 1000)  # the panels are up; the data comes after
        deadline, shot = time.monotonic() + timeout, None
        while True:  # until two shots 3 s apart are the same: the plots have drawn everything
            time.sleep(3.0)
            last, shot = shot, page.screenshot()
            if shot == last or time.monotonic() > deadline:
                break
        out.write_bytes(shot)
        browser.close()
    server.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-dir", type=Path, required=True, help="the built Lichtblick web app (web/.webpack)")
    parser.add_argument("--layout", type=Path, default=Path(__file__).with_name("segment_layout.json"))
    parser.add_argument("--segment", type=Path, required=True, help="an .mcap segment")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--size", default="1600x1000", help="the window, WIDTHxHEIGHT")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the plots at most")
    args = parser.parse_args()
    screenshot(args.app_dir, args.layout, args.segment, args.out, args.size, args.chromium, args.timeout)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
