"""Drive the Gradio demo in headless Chromium: generate samples, restore a digit, check the error messages.

Uses Debian's Chromium (``apt-get install chromium``); Playwright never downloads a browser here.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from tests.conftest import PROJECT_ROOT, SUBPROCESS_TIMEOUT_S

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Safety nets against a hang, not speed limits: a busy 2-core machine may take minutes to start Gradio.
START_TIMEOUT_S = SUBPROCESS_TIMEOUT_S
SAMPLE_TIMEOUT_MS = 600_000
expect.set_options(timeout=SAMPLE_TIMEOUT_MS)  # every expect() without its own timeout (Playwright's is 5 s)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the demo exited with code {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the demo did not start within {START_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def tiny_cold_folder(tmp_path_factory) -> Path:
    """An untrained, tiny cold pipeline (row averaging, T = 7, a fitted prior), saved."""
    import torch

    from mnist_diffusion.models import CourseworkCNN
    from mnist_diffusion.pipelines import ColdDiffusionPipeline
    from mnist_diffusion.schedulers import AveragingScheduler

    scheduler = AveragingScheduler(group_size=4)
    clean = (torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    scheduler.fit_prior(clean * 2 - 1, torch.Generator().manual_seed(0))
    unet = CourseworkCNN(n_hidden=(4, 4), time_embedding_frequencies=2, num_train_timesteps=7)
    folder = tmp_path_factory.mktemp("tiny_cold")
    ColdDiffusionPipeline(unet, scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_conditional_folder(tmp_path_factory) -> Path:
    """An untrained, tiny class-conditional Gaussian pipeline (T = 10, labels 0-9 and 10 for none), saved."""
    import torch

    from mnist_diffusion.models import CourseworkCNN
    from mnist_diffusion.pipelines import save_pipeline
    from mnist_diffusion.schedulers import ddpm_scheduler, forward_process

    unet = CourseworkCNN(
        n_hidden=(4, 4), time_embedding_frequencies=2, num_train_timesteps=10, num_class_embeds=11
    )
    torch.nn.init.normal_(unet.class_embedding.weight)  # labels that change the samples
    folder = tmp_path_factory.mktemp("tiny_conditional")
    scheduler = ddpm_scheduler("linear", num_train_timesteps=10)
    save_pipeline(forward_process(scheduler).make_pipeline(unet), folder)
    return folder


@pytest.fixture(scope="module")
def demo_url(
    tiny_ddpm_folder: Path,
    tiny_cold_folder: Path,
    tiny_conditional_folder: Path,
    synthetic_mnist: Path,
    tmp_path_factory,
) -> Iterator[str]:
    """Serve ``scripts/demo.py`` with the tiny pipelines on a free local port; stopped after the tests.

    The Gaussian one is selected first; the cold one is offered too, with the synthetic test digits to pick,
    and a class-conditional Gaussian one.
    """
    port = _free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    models = ["--model", str(tiny_ddpm_folder), "--model", str(tiny_cold_folder)]
    models += ["--model", str(tiny_conditional_folder)]
    # A budget of 100 images x network calls: the tests' runs fit, 64 images x 20 steps does not.
    command = [sys.executable, "scripts/demo.py", *models, "--port", str(port), "--max_image_steps", "100"]
    with open(log, "w") as output:
        process = subprocess.Popen(
            [*command, "--test_data", str(synthetic_mnist)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def page(chromium: str, demo_url: str) -> Iterator[Page]:
    # `chromium` (tests/conftest.py) skips, or fails under REQUIRE_BROWSER_TESTS=1, before the demo starts.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(SAMPLE_TIMEOUT_MS)  # clicks, fills and goto (Playwright's is 30 s)
            page.goto(demo_url)
            yield page
        finally:
            browser.close()


def _fetch_image(page: Page, src: str) -> Image.Image:
    return Image.open(io.BytesIO(page.request.get(src).body()))


def test_generate_fills_gallery_with_non_blank_images(page: Page, tmp_path: Path) -> None:
    page.locator("#num-images input").fill("5")
    page.locator("#steps input").fill("10")
    page.locator("#generate").click()

    thumbnails = page.locator("#samples img")
    expect(thumbnails).to_have_count(5, timeout=SAMPLE_TIMEOUT_MS)
    for src in thumbnails.evaluate_all("images => images.map(image => image.src)"):
        pixels = np.asarray(_fetch_image(page, src).convert("L"))
        assert pixels.std() > 10, f"blank sample {src}"
    expect(page.locator("#timing")).to_contain_text("5 image(s), DPM-Solver++, 10 steps")

    process = _fetch_image(page, page.locator("#process img").get_attribute("src"))
    assert process.n_frames > 2, "the reverse process should be animated"
    page.screenshot(path=tmp_path / "demo.png", full_page=True)
    assert (tmp_path / "demo.png").stat().st_size > 0


def test_a_cold_model_restores_a_picked_digit_from_the_chosen_t(page: Page, tiny_cold_folder: Path) -> None:
    # The Gaussian model's process does not restore images: no restoration panel.
    expect(page.locator("#restore")).to_be_hidden()
    model = page.locator("#model input")
    model.fill(str(tiny_cold_folder))
    model.press("Enter")
    expect(page.locator("#restore")).to_be_visible(timeout=SAMPLE_TIMEOUT_MS)
    expect(page.get_by_text("Improved (Algorithm 2)")).to_be_visible()
    expect(page.locator("#steps input")).to_have_value("7")  # the improved sampler's default: all T steps

    page.locator("#test-digits img").first.click()
    expect(page.locator("#digit img")).to_be_visible(timeout=SAMPLE_TIMEOUT_MS)
    expect(page.locator("#degraded img")).to_be_visible(timeout=SAMPLE_TIMEOUT_MS)
    page.locator("#restore").click()

    # The slider's default is t = 4: one call from t = 4, then one from each of 3, 2, 1 of the 7-step grid.
    expect(page.locator("#timing")).to_contain_text(
        "restored from t = 4 in 4 network call(s), Improved (Algorithm 2)", timeout=SAMPLE_TIMEOUT_MS
    )
    expect(page.locator("#samples img")).to_have_count(3)
    process = _fetch_image(page, page.locator("#process img").get_attribute("src"))
    assert process.n_frames == 5, "the start and the sample after each of the 4 steps"


def test_a_conditional_model_offers_a_digit_and_a_guidance_scale(
    page: Page, tiny_conditional_folder: Path
) -> None:
    # The unconditional model selected first has neither control.
    expect(page.locator("#class-digit")).to_be_hidden()
    expect(page.locator("#guidance-scale")).to_be_hidden()
    model = page.locator("#model input")
    model.fill(str(tiny_conditional_folder))
    model.press("Enter")
    expect(page.locator("#class-digit")).to_be_visible(timeout=SAMPLE_TIMEOUT_MS)
    expect(page.locator("#guidance-scale")).to_be_visible()
    scale = page.locator("#guidance-scale input[type='number']")
    expect(scale).to_be_disabled()  # "any": unconditional, the scale does not matter

    page.locator("#class-digit input").click()
    page.get_by_role("option", name="7", exact=True).click()
    expect(scale).to_be_enabled(timeout=SAMPLE_TIMEOUT_MS)
    scale.fill("2.5")
    scale.press("Enter")
    page.locator("#num-images input").fill("3")
    page.locator("#steps input").fill("4")
    page.locator("#generate").click()
    expect(page.locator("#timing")).to_contain_text(
        "3 image(s) of digit 7 (guidance scale 2.5), DPM-Solver++, 4 steps", timeout=SAMPLE_TIMEOUT_MS
    )
    expect(page.locator("#samples img")).to_have_count(3)


def test_bad_settings_show_readable_errors(page: Page) -> None:
    page.locator("#num-images input").fill("0")
    page.locator("#generate").click()
    expect(page.get_by_text("Number of images must be between 1 and 64, got 0")).to_be_visible()

    page.locator("#num-images input").fill("2")
    page.locator("#steps input").fill("21")
    page.locator("#generate").click()
    expect(page.get_by_text("Steps must be between 1 and 20, got 21")).to_be_visible()

    page.locator("#num-images input").fill("64")
    page.locator("#steps input").fill("20")
    page.locator("#generate").click()
    expect(
        page.get_by_text(
            "64 image(s) x 20 network call(s) = 1280 is over this demo's limit of 100 images x network calls "
            "per request; ask for fewer images or steps"
        )
    ).to_be_visible()

    # Only the offered models: neither a Hub id nor a folder on the server, and the error names neither.
    model = page.locator("#model input")
    for count, name in enumerate(("no-such/model", "/etc"), start=1):
        model.fill(name)
        model.press("Enter")
        # The messages stay until dismissed: one more each time.
        expect(page.get_by_text("unknown model; choose one of the offered models")).to_have_count(count)
