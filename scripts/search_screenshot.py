#!/usr/bin/env python
"""Screenshot of the search web app after a query typed in a real (headless) Chromium, for docs/search.md.

Serves INDEX on a free loopback port in this process, types the query into the page's box, submits, clicks
the first result (the player seeks to its window) and saves a PNG. Needs /usr/bin/chromium,
/usr/bin/chromedriver and selenium (the dev extra).

  python scripts/search_screenshot.py /tmp/msrvtt_index "a checked purple block pops into view" \
      --out docs/img/search_app.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time

from mmpt_lite.search.query import SearchIndex
from mmpt_lite.search.server import make_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", help="index folder (mmpt-lite index)")
    parser.add_argument("query", help="text typed into the search box")
    parser.add_argument("--out", default="docs/img/search_app.png")
    parser.add_argument("-k", type=int, default=6)
    parser.add_argument("--click", type=int, default=1, help="result to play (1-based; 0: none)")
    parser.add_argument("--size", default="1280,860", help="window width,height")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = parser.parse_args(argv)

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = make_server(SearchIndex(args.index), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", f"--window-size={args.size}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(args.chromedriver))
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        top = driver.find_element(By.ID, "k")
        top.clear()
        top.send_keys(str(args.k))
        driver.find_element(By.ID, "q").send_keys(args.query)
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: d.execute_script("return document.getElementById('results').dataset.done === '1'"))
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
        if args.click:
            driver.find_elements(By.CSS_SELECTOR, "#results li")[args.click - 1].click()
            wait.until(lambda d: d.execute_script("return document.getElementById('player').readyState >= 2"))
            time.sleep(1.0)  # let it play a moment into the window
            driver.execute_script("document.getElementById('player').pause()")
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
