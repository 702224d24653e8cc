"""The page `sdrt serve` gives at /, driven in a real browser: headless Chromium (the distribution's `chromium` and
`chromium-driver`) through Selenium, against a real server on the trained `shapes` model. Without a browser these
tests skip and say how to install one."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from sdrt import shapes
from sdrt.runtime import Pipeline

pytest.importorskip("selenium", reason="selenium is not installed (the test extra)")
from page_driver import (BROWSER, DRIVER, chromium, fill, open_page, paint_left_half, results,  # noqa: E402
                         upload_for_inpainting)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from test_serve import Server  # noqa: E402

if not (BROWSER and DRIVER):
    pytest.skip("no headless browser: install one with `apt-get install chromium chromium-driver` to run the page "
                "tests", allow_module_level=True)

PROMPT = "a red circle on a white background"


@pytest.fixture(scope="module")
def folder(export_dir):
    return export_dir("shapes")


@pytest.fixture(scope="module")
def server(folder):
    s = Server(folder, "--preview-every", "1")
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    driver = chromium(network_log=True)  # the log: the HTTP statuses the browser saw
    yield driver
    driver.quit()




def _wait_for_results(browser, count: int, timeout: float = 120) -> list:
    WebDriverWait(browser, timeout).until(lambda b: len(results(b)) >= count or "error" in
                                          b.find_element(By.ID, "status").get_attribute("class"))
    assert len(results(browser)) >= count, browser.find_element(By.ID, "status").text
    return results(browser)


def _image_of(figure) -> Image.Image:
    src = figure.find_element(By.TAG_NAME, "img").get_attribute("src")
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


def test_generate_with_progress_and_live_preview(server, browser, folder):
    open_page(browser, server.url)
    assert browser.find_element(By.ID, "width").get_attribute("value") == "64"  # the export's native size
    fill(browser, steps=150, seed=7, negative_prompt="")
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(PROMPT, Keys.ENTER)  # Enter generates
    seen, previews = set(), set()
    deadline = time.time() + 120
    while not results(browser) and time.time() < deadline:
        seen.add(browser.execute_script("return document.getElementById('progress').value"))
        if browser.find_element(By.ID, "preview").is_displayed():
            previews.add(browser.find_element(By.ID, "preview").get_attribute("src")[-40:])
        time.sleep(0.05)
    figure = _wait_for_results(browser, 1)[0]
    assert len([v for v in seen if 0 < v < 1]) >= 2, seen  # the bar moved
    assert len(previews) >= 2, "the live preview did not change while the job ran"
    image = _image_of(figure)
    with Pipeline.load(folder) as pipe:  # the page's image is the Python API's, from the same seed
        alone = pipe(PROMPT, negative_prompt="", seed=7, num_inference_steps=150, guidance_scale=7.0,
                     scheduler="pndm").images[0]
    assert np.abs(np.asarray(image.convert("RGB"), np.int16) - np.asarray(alone, np.int16)).max() <= 1
    assert shapes.read(image) == ("red", "circle", "white")
    infotext = figure.find_element(By.CSS_SELECTOR, ".infotext").text
    assert "Seed: 7" in infotext and "Steps: 150" in infotext
    assert figure.find_element(By.CSS_SELECTOR, "a.download").get_attribute("download") == "sdrt-7.png"


def test_interrupt_stops_a_long_job(server, browser):
    open_page(browser, server.url)
    fill(browser, prompt="a green square on a black background", steps=150, width=128, height=128, batch_size=4)
    browser.find_element(By.ID, "prompt").send_keys(Keys.CONTROL, Keys.ENTER)  # Ctrl+Enter generates too
    WebDriverWait(browser, 60).until(
        lambda b: b.execute_script("return document.getElementById('progress').value") > 0.02)
    started = time.time()
    browser.find_element(By.ID, "interrupt").click()
    figures = _wait_for_results(browser, 4, timeout=60)
    assert time.time() - started < 20  # not its 150 steps of 4 images
    assert browser.find_element(By.ID, "generate").is_enabled()
    assert len(figures) == 4


def test_inpaint_with_a_painted_mask(server, browser, tmp_path):
    source = shapes.draw("blue", "square", "white", np.random.default_rng(3))
    Image.fromarray(source).save(tmp_path / "input.png")
    open_page(browser, server.url)
    upload_for_inpainting(browser, tmp_path / "input.png")
    assert browser.find_element(By.ID, "mask-canvas").get_attribute("width") == "64"
    fill(browser, prompt=PROMPT, seed=5, steps=20, denoising_strength=0.75)
    paint_left_half(browser)
    browser.find_element(By.ID, "generate").click()
    result = np.asarray(_image_of(_wait_for_results(browser, 1)[0]).convert("RGB"), np.float32)
    change = np.abs(result - source.astype(np.float32)).mean(axis=2)
    painted, kept = change[:, :24].mean(), change[:, 40:].mean()
    assert painted > 3 * kept and kept < 12, (painted, kept)  # repainted where painted, kept elsewhere


def test_png_parameters_fill_the_form(server, browser, tmp_path):
    open_page(browser, server.url)
    fill(browser, prompt="a yellow triangle on a gray background", seed=11, steps=12, cfg_scale=5)
    browser.find_element(By.ID, "generate").click()
    figure = _wait_for_results(browser, 1)[0]
    png = tmp_path / "made.png"  # the PNG as the page's Download link gives it, with its parameters
    png.write_bytes(base64.b64decode(figure.find_element(By.CSS_SELECTOR, "a.download").get_attribute("href")
                                     .split(",", 1)[1]))

    open_page(browser, server.url)  # a fresh form, then the PNG read back into it
    browser.find_element(By.ID, "png_file").send_keys(str(png))
    WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "seed").get_attribute("value") == "11")
    values = {k: browser.find_element(By.ID, k).get_attribute("value") for k in ("prompt", "steps", "cfg_scale")}
    assert values["prompt"] == "a yellow triangle on a gray background"
    assert float(values["steps"]) == 12 and float(values["cfg_scale"]) == 5

    open_page(browser, server.url)  # and by dropping it on the page
    browser.execute_script(_DROP, base64.b64encode(png.read_bytes()).decode())
    WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "seed").get_attribute("value") == "11")
    assert Select(browser.find_element(By.ID, "sampler")).first_selected_option.text == "PLMS"


def test_flux_page_offers_its_samplers_and_distilled_guidance(export_dir, browser):
    """On Flux the form lists the samplers the model runs, starts CFG at 1 (true CFG off) and shows Forge's
    Distilled CFG scale, which reaches the model as its guidance input."""
    folder = export_dir("tiny-flux")
    server = Server(folder)
    try:
        open_page(browser, server.url)
        sampler = Select(browser.find_element(By.ID, "sampler"))
        assert [o.text for o in sampler.options] == ["Euler", "Heun", "DPM++ 2M", "UniPC"]
        assert sampler.first_selected_option.text == "Euler"
        distilled = browser.find_element(By.ID, "distilled_cfg_scale")
        assert distilled.is_displayed() and distilled.get_attribute("value") == "3.5"
        assert browser.find_element(By.ID, "cfg_scale").get_attribute("value") == "1"
        fill(browser, prompt=PROMPT, negative_prompt="", seed=5, steps=3, width=64, height=64, distilled_cfg_scale=2.5)
        browser.find_element(By.ID, "generate").click()
        figure = _wait_for_results(browser, 1)[0]
        with Pipeline.load(folder) as pipe:
            alone = pipe(PROMPT, seed=5, num_inference_steps=3, height=64, width=64, guidance_scale=2.5).images[0]
        image = np.asarray(_image_of(figure).convert("RGB"), np.int16)
        assert np.abs(image - np.asarray(alone, np.int16)).max() <= 1
        assert "Distilled CFG Scale: 2.5" in figure.find_element(By.CSS_SELECTOR, ".infotext").text
    finally:
        server.close()


def test_sd_page_hides_the_distilled_guidance(server, browser):
    open_page(browser, server.url)
    assert not browser.find_element(By.ID, "distilled_cfg_scale").is_displayed()
    assert "DPM++ 2M Karras" in [o.text for o in Select(browser.find_element(By.ID, "sampler")).options]


def _document_status(browser, url: str) -> int:
    """The HTTP status of the browser's last response for ``url`` (from its network log)."""
    events = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
    return [e["params"]["response"]["status"] for e in events if e["method"] == "Network.responseReceived"
            and e["params"]["response"]["url"] == url][-1]


_DROP = """
const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
document.getElementById("gallery").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
"""


def test_busy_server_is_retried_and_auth_is_asked(folder, browser):
    server = Server(folder, "--max-batch", "1", "--max-queue", "1", "--api-auth", "alice:s3cret")
    try:
        browser.get_log("performance")
        browser.get(server.url)  # no credentials: refused
        assert _document_status(browser, server.url + "/") == 401
        open_page(browser, server.url.replace("http://", "http://alice:s3cret@"))
        slow = {"prompt": "slow", "width": 64, "height": 64, "steps": 150}
        auth = ("alice", "s3cret")
        with ThreadPoolExecutor(2) as pool:  # one running, then one queued: the queue is full
            running = [pool.submit(server.client.post, "/sdapi/v1/txt2img", json={**slow, "seed": 0}, auth=auth)]
            WebDriverWait(browser, 30).until(lambda b: server.client.get("/sdapi/v1/progress", auth=auth)
                                             .json()["state"]["sampling_step"] > 0)
            running.append(pool.submit(server.client.post, "/sdapi/v1/txt2img", json={**slow, "seed": 1}, auth=auth))
            time.sleep(0.5)
            fill(browser, prompt=PROMPT, steps=5)
            browser.find_element(By.ID, "generate").click()
            WebDriverWait(browser, 30).until(lambda b: "busy" in b.find_element(By.ID, "status").text)
            assert all(r.result(timeout=300).status_code == 200 for r in running)
        _wait_for_results(browser, 1, timeout=60)  # retried once there was room
    finally:
        server.close()
