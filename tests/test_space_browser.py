"""The Space's app in a real browser: started on 127.0.0.1, driven in headless Chromium (Debian's `chromium` and
`chromium-driver` through selenium): a text's top emotion and score as the pipeline gives them, a file uploaded and
its labelled copy downloaded, and the pipeline's error for an empty text shown in the page."""

from __future__ import annotations

import os
import shutil
import socket
import urllib.request
from pathlib import Path

import pytest

from helpers import tiny_fusion_model, write_csv_dataset
from llm_fusion_fec.inference.labelling import Labeller
from llm_fusion_fec.inference.predict import label_file
from llm_fusion_fec.publishing.saving import write_endpoint_files
from pipeline_fec import save_for_pipeline

pytestmark = pytest.mark.real
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
EMOTIONS = ["sad", "joyful", "angry", "afraid"]
EXAMPLE = "I won the lottery this morning!"
WAIT_S = 60


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and DRIVER):
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.save_screenshot(str(tmp_path / "space.png"))  # what the page showed at the end of the test
    driver.quit()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_space_in_a_browser(tiny_backbones, tmp_path, browser):
    pytest.importorskip("gradio", reason="Gradio is not installed: pip install '.[demo]'")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from llm_fusion_fec.serving.space import build_demo, load_demo_pipeline
    from llm_fusion_fec.serving.space_app import UPLOAD_BATCH_SIZE

    model = tiny_fusion_model(tiny_backbones, EMOTIONS, "single_label_classification")
    folder = tmp_path / "model"
    save_for_pipeline(model, folder)
    write_endpoint_files(model.config, folder)
    (folder / "README.md").write_text(f"---\nwidget:\n- text: {EXAMPLE}\n---\n# a model\n")
    paths = {spec["name"]: spec["model"] for spec in tiny_backbones}
    demo = build_demo(folder, backbone_paths=paths, device="cpu")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        pipe = load_demo_pipeline(folder, paths, "cpu")  # the reference: the pipeline the page runs, loaded apart
        wait = WebDriverWait(browser, WAIT_S)
        browser.get(f"http://127.0.0.1:{port}/")
        text_box = wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#text textarea"))
        assert EXAMPLE in browser.page_source  # the card's widget text is offered as an example

        # A text: the top emotion and its score as the page shows them are the pipeline's.
        text = "my best friend moved away and i feel so alone"
        text_box.send_keys(text)
        browser.find_element(By.CSS_SELECTOR, "#classify").click()
        top = wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#scores [data-testid=label-output-value]"))
        (expected,) = pipe(text)
        assert top.text == expected["label"]
        meter = browser.find_element(By.CSS_SELECTOR, f"#scores meter[aria-label={expected['label']}]")
        assert float(meter.get_attribute("value")) == pytest.approx(expected["score"], abs=1e-6)

        # An empty text: the pipeline's one-line error, in the page.
        text_box.send_keys(Keys.CONTROL, "a")
        text_box.send_keys(Keys.BACKSPACE)  # as a user empties it (`clear()` would not tell the page)
        browser.find_element(By.CSS_SELECTOR, "#classify").click()
        message = "Error: The text is empty or only whitespace: ''."
        wait.until(lambda page: message in page.find_element(By.CSS_SELECTOR, "#message").text)

        # A file: uploaded, labelled, downloaded; the same file `fec predict`'s code writes, bad row included.
        source = write_csv_dataset(tmp_path / "data", [("i am so happy", 1), (" ", 0), ("my cat is ill", 0)])
        upload = source / "train.csv"
        browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(upload))
        wait.until(lambda page: page.find_elements(By.CSS_SELECTOR, "#upload [aria-label='train.csv']"))
        browser.find_element(By.CSS_SELECTOR, "#label-file").click()
        link = wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#labelled a[href]"))
        with urllib.request.urlopen(link.get_attribute("href"), timeout=WAIT_S) as response:
            downloaded = response.read()
        expected_file = label_file(Labeller.from_pipeline(pipe, UPLOAD_BATCH_SIZE), upload, tmp_path / "e.csv").output
        assert downloaded == Path(expected_file).read_bytes()
        assert "1 of 3 rows could not be labelled (lines 3)" in browser.find_element(By.CSS_SELECTOR, "#message").text
    finally:
        demo.close()
