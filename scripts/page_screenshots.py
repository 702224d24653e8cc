"""Screenshots of the page `sdrt serve` gives, for the README: docs/page.png (a batch made on shapes) and
docs/page-inpaint.png (inpainting with a painted mask). Needs headless Chromium (apt-get install chromium
chromium-driver) and an export of shapes:

    python scripts/page_screenshots.py build/demo/shapes
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from page_driver import chromium, fill, open_page, paint_left_half, results, upload_for_inpainting  # noqa: E402

from sdrt import shapes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="an export of shapes")
    parser.add_argument("--out", default="docs", help="where the PNGs go")
    parser.add_argument("--port", type=int, default=7871)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "sdrt.cli", "serve", args.folder, "--port", str(args.port)])
    try:
        _wait_ready(url)
        browser = chromium(1280, 900)
        try:
            _batch(browser, url, Path(args.out) / "page.png")
            browser.set_window_size(1280, 900)
            _inpaint(browser, url, Path(args.out) / "page-inpaint.png")
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_ready(url: str) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not get ready in 120 s")


def _generate(browser, count: int) -> None:
    before = len(results(browser))
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 120).until(lambda b: len(results(b)) >= before + count)


def _batch(browser, url: str, path: Path) -> None:
    open_page(browser, url)
    for prompt, seed in (("a blue triangle on a white background", 3), ("a red circle on a gray background", 8)):
        fill(browser, prompt=prompt, seed=seed, steps=25, batch_size=1)
        _generate(browser, 1)
    browser.save_screenshot(str(path))
    print(f"wrote {path}")


def _inpaint(browser, url: str, path: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "input.png"
        Image.fromarray(shapes.draw("blue", "square", "white", np.random.default_rng(3))).save(source)
        open_page(browser, url)
        upload_for_inpainting(browser, source)
        fill(browser, prompt="a red circle on a white background", seed=5, steps=20)
        paint_left_half(browser)
        _generate(browser, 1)
        browser.set_window_size(1280, 1250)  # the whole form, its mask and the result
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(path))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
