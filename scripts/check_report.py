"""Open a run's report in headless Chromium, wait for it to render, save a screenshot, and fail
if any image is broken, a chart is empty, or the browser console shows an error.

    python scripts/check_report.py runs/quickstart                       # writes the report, then checks it
    python scripts/check_report.py runs/quickstart --screenshot docs/report.png
    python scripts/check_report.py --html some/report.html              # check a page as it is

Needs Chromium with its driver (Debian/Ubuntu: ``apt-get install chromium chromium-driver``)
and Selenium (``pip install 'hadmc[check]'``); says so and exits 2 when either is missing.
Exits 0 when every check passes, 1 when one fails; prints one JSON object.

A chart is empty when its image has fewer than 0.5% non-white pixels or the report says it
draws no points (``data-points``). The network stays closed: the page must need nothing from
outside, and Chromium is started without background services.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_HINT = "install Chromium and its driver: apt-get install chromium chromium-driver (Debian/Ubuntu)"
SELENIUM_HINT = "install Selenium: pip install 'hadmc[check]'"

# Per image: loaded, decoded size, drawn points, and the share of non-white pixels (a canvas
# reads data: URLs without tainting).
IMAGE_PROBE = """
return Array.from(document.images).map(function (img) {
  var out = {chart: img.dataset.chart || img.alt || img.src.slice(0, 40), complete: img.complete,
             width: img.naturalWidth, height: img.naturalHeight, shown: img.offsetWidth > 0 && img.offsetHeight > 0,
             points: img.dataset.points === undefined ? null : parseInt(img.dataset.points, 10), ink: 0};
  if (img.complete && img.naturalWidth > 0) {
    var c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    var ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    var d = ctx.getImageData(0, 0, c.width, c.height).data, ink = 0;
    for (var i = 0; i < d.length; i += 4) { if (d[i] < 235 || d[i + 1] < 235 || d[i + 2] < 235) ink++; }
    out.ink = ink / (c.width * c.height);
  }
  return out;
});
"""


def find_browser() -> tuple[str, str]:
    chrome = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if chrome is None or driver is None:
        missing = "Chromium" if chrome is None else "chromedriver"
        raise SystemExit(_fail(f"{missing} is not installed; {CHROMIUM_HINT}"))
    return chrome, driver


def _fail(message: str) -> int:
    print(json.dumps({"ok": False, "error": message}), flush=True)
    print(f"check_report: {message}", file=sys.stderr)
    return 2


def open_browser(chrome: str, driver_path: str, profile: str, width: int):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise SystemExit(_fail(f"Selenium is not installed; {SELENIUM_HINT}")) from None
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                f"--window-size={width},1000", "--hide-scrollbars"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def check(html: Path, screenshot: Path, width: int, timeout_s: float) -> dict:
    chrome, driver_path = find_browser()
    with tempfile.TemporaryDirectory(prefix="hadmc-chromium-") as profile:
        driver = open_browser(chrome, driver_path, profile, width)  # says what to install when Selenium is missing
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            t0 = time.perf_counter()
            driver.get(html.resolve().as_uri())
            WebDriverWait(driver, timeout_s).until(
                lambda d: d.execute_script("return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)")
            )
            render_s = time.perf_counter() - t0
            images = driver.execute_script(IMAGE_PROBE)
            height = int(driver.execute_script("return Math.ceil(document.documentElement.scrollHeight)"))
            driver.set_window_size(width, height)
            time.sleep(0.3)  # let the resized viewport lay out before the capture
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
            logs = driver.get_log("browser")
            version = driver.capabilities.get("browserVersion", "?")
        finally:
            driver.quit()
    problems = []
    if not images:
        problems.append("the page has no images")
    for im in images:
        name = im["chart"]
        if not im["complete"] or im["width"] == 0 or im["height"] == 0:
            problems.append(f"image {name} is broken (did not decode)")
        elif not im["shown"]:
            problems.append(f"image {name} is not displayed")
        elif im["points"] is not None and im["points"] <= 0:
            problems.append(f"chart {name} draws no points")
        elif im["ink"] < 0.005:
            problems.append(f"chart {name} is empty ({100 * im['ink']:.2f}% non-white pixels)")
    errors = [e for e in logs if e.get("level") == "SEVERE"]
    problems += [f"console error: {e.get('message')}" for e in errors]
    return {
        "ok": not problems,
        "html": str(html),
        "screenshot": str(screenshot),
        "chromium": version,
        "render_s": round(render_s, 3),
        "page_height_px": height,
        "images": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in im.items()} for im in images],
        "console": [{"level": e.get("level"), "message": e.get("message")} for e in logs],
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", type=Path, help="run directory: its report is written (as `hadmc report` does), then checked")
    ap.add_argument("--html", type=Path, help="check this HTML file as it is instead of writing a run's report")
    ap.add_argument("--screenshot", type=Path, help="where to save the full-page screenshot (default: beside the HTML, <name>_screenshot.png)")
    ap.add_argument("--width", type=int, default=1280, help="browser window width in pixels")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the page to render")
    args = ap.parse_args(argv)
    if (args.run_dir is None) == (args.html is None):
        ap.error("pass a run directory or --html FILE")
    find_browser()  # before any work: say how to install it when it is missing
    if args.html is None:
        from hadmc.errors import HadmcError
        from hadmc.report import write_report
        from hadmc.results import load_results

        try:
            html = write_report(load_results(args.run_dir)).html
        except HadmcError as exc:
            return _fail(str(exc))
    else:
        html = args.html
        if not html.is_file():
            return _fail(f"{html} does not exist")
    shot = args.screenshot or html.with_name(html.stem + "_screenshot.png")
    result = check(html, shot, args.width, args.timeout)
    print(json.dumps(result, indent=1))
    for p in result["problems"]:
        print(f"check_report: FAIL {p}", file=sys.stderr)
    if result["ok"]:
        print(f"check_report: ok ({len(result['images'])} images rendered, no console errors); screenshot {shot}", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
