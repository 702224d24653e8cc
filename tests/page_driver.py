"""Driving sdrt serve's page in headless Chromium (Selenium): what the page tests and scripts/page_screenshots.py
share."""

from __future__ import annotations

import shutil

from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")


def chromium(width: int = 1280, height: int = 1000, network_log: bool = False):
    """Headless Chromium of the distribution (nothing downloaded); ``network_log``: keep the HTTP statuses seen."""
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                 "--hide-scrollbars"):
        options.add_argument(flag)
    if network_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))


def open_page(browser, url: str) -> None:
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "status").text == "Ready.")


def fill(browser, **fields) -> None:
    """Type each value into the form field of that id."""
    for name, value in fields.items():
        element = browser.find_element(By.ID, name)
        element.clear()
        element.send_keys(str(value))


def paint_left_half(browser) -> None:
    """Paint the inpainting mask over the left half of the image with the mouse (the canvas shows 64 px at 256 px:
    a 64 px brush on screen is 16 image px)."""
    canvas = browser.find_element(By.ID, "mask-canvas")
    browser.execute_script("document.getElementById('brush').value = 64")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    actions = ActionChains(browser).move_to_element_with_offset(canvas, -96, -96).click_and_hold()
    for y in range(-96, 97, 24):
        actions.move_to_element_with_offset(canvas, -96, y).move_to_element_with_offset(canvas, -32, y)
    actions.release().perform()


def upload_for_inpainting(browser, path) -> None:
    """Inpaint mode, with the image at ``path`` as the input (once its canvas has its size)."""
    browser.find_element(By.CSS_SELECTOR, "input[value=inpaint]").click()
    browser.find_element(By.ID, "init_image").send_keys(str(path))
    canvas = browser.find_element(By.ID, "mask-canvas")
    WebDriverWait(browser, 10).until(lambda b: canvas.get_attribute("width") not in (None, "300"))  # 300: no image


def results(browser) -> list:
    return browser.find_elements(By.CSS_SELECTOR, "#gallery figure")
