"""The web page (api/web) in a real browser: headless Chromium and ChromeDriver from `make tools`
(Debian's packages), driven by Selenium, against a stack of this module's own (Temporal dev
server, API, CPU worker and two GPU workers as processes, checkpoints every 4 steps).

Each test saves a screenshot under test-artifacts/web/ and fails on any JavaScript error the
page logged. What the page shows is read from the DOM, as a person would read it.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from browser import chromium
from helpers import api_client, preemption_env, private_stack, wait_for, wait_step
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from videogen.settings import DEV_API_KEY
from videogen.stack import Stack, gpu_worker_pid

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "web"
# Long enough to watch and to interrupt: about 15 s of denoising on 2 cores.
WATCHED = {"size": "128x128", "seconds": "2", "steps": "60"}
OTHER_KEY = "vg-web-other-key"


@pytest.fixture(scope="module")
def wstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        **preemption_env("web"),
        # internal: no concurrency limit, for the gallery test's 13 jobs.
        "VIDEOGEN_API_KEYS": f"{DEV_API_KEY}:dev:internal,{OTHER_KEY}:other:free",
        "VIDEOGEN_EVENTS_POLL_S": "0.2",
    }
    with private_stack(tmp_path_factory, "web", env, gpu_workers=2) as s:
        yield s


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    d = chromium()
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def page(wstack: Stack, driver: WebDriver, request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    """The page, freshly loaded and signed out; afterwards a screenshot, and no script error."""
    driver.set_window_size(1280, 1000)
    # A page of the same origin that runs no script, so no sign-in can write the key back.
    driver.get(f"{wstack.api_url}/app/app.css")
    driver.execute_script("localStorage.clear()")
    driver.get(f"{wstack.api_url}/")
    yield driver
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{request.node.name}.png"))
    errors = [
        e["message"]
        for e in driver.get_log("browser")
        # The API's 4xx answers are logged by the browser as failed loads; they are expected.
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]
    assert errors == [], errors


@pytest.fixture
def wapi(wstack: Stack) -> Iterator[httpx.Client]:
    with api_client(wstack) as client:
        yield client


def until(driver: WebDriver, check: Callable[[WebDriver], object], timeout_s: float = 30) -> None:
    WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(check)


def sign_in(driver: WebDriver, key: str = DEV_API_KEY) -> None:
    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()


def signed_in(driver: WebDriver) -> None:
    sign_in(driver)
    until(driver, lambda d: d.find_element(By.ID, "app").is_displayed())
    until(driver, lambda d: len(Select(d.find_element(By.ID, "model")).options) > 0)


def fill(driver: WebDriver, prompt: str, **fields: str) -> None:
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(prompt)
    for name in ("size", "seconds"):
        if name in fields:
            Select(driver.find_element(By.ID, name)).select_by_value(fields[name])
    for field, name in (("steps", "num_inference_steps"), ("seed", "seed")):
        if field in fields:
            box = driver.find_element(By.ID, name)
            box.clear()
            box.send_keys(fields[field])


def create(driver: WebDriver, prompt: str, **fields: str) -> WebElement:
    """Submit the form; the new job's card: a card that was not there, with this prompt (the
    list of earlier videos may still be arriving too)."""
    before = {job_id(c) for c in driver.find_elements(By.CSS_SELECTOR, ".card")}
    fill(driver, prompt, **fields)
    driver.find_element(By.ID, "create-button").click()

    def new_card(d: WebDriver) -> WebElement | None:
        for card in d.find_elements(By.CSS_SELECTOR, ".card"):
            if job_id(card) not in before and text(card, ".prompt") == prompt:
                return card
        return None

    found: list[WebElement] = []

    def appeared(d: WebDriver) -> bool:
        card = new_card(d)
        if card is not None:
            found.append(card)
        return card is not None

    until(driver, appeared)
    return found[-1]


def text(card: WebElement, part: str) -> str:
    return str(card.find_element(By.CSS_SELECTOR, part).text)


def watch(
    driver: WebDriver, card: WebElement, done: Callable[[], bool], timeout_s: float
) -> list[str]:
    """Everything the card's status and detail lines showed until `done()`, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"not done after {timeout_s} s; saw {seen}"
        shown = f"{text(card, '.status')} | {text(card, '.detail')}"
        if not seen or seen[-1] != shown:
            seen.append(shown)
        time.sleep(0.05)
    return seen


def assert_plays(driver: WebDriver, card: WebElement, seconds: float) -> None:
    """The card's player has loaded the MP4 (its real duration) and plays it."""
    until(driver, lambda d: card.find_element(By.CSS_SELECTOR, ".player").is_displayed())
    video = card.find_element(By.CSS_SELECTOR, "video")
    until(driver, lambda d: d.execute_script("return arguments[0].readyState", video) >= 2)
    assert video.get_attribute("poster"), "no thumbnail"
    duration = driver.execute_script("return arguments[0].duration", video)
    assert seconds <= duration <= seconds + 0.25, duration
    driver.execute_script("arguments[0].play()", video)
    until(driver, lambda d: d.execute_script("return arguments[0].currentTime", video) > 0.2)
    assert card.find_element(By.CSS_SELECTOR, ".download").get_attribute("href")
    assert "until" in text(card, ".expiry")


def job_id(card: WebElement) -> str:
    return str(card.get_attribute("data-id"))


def test_a_bad_key_is_refused_with_a_message_and_a_good_one_is_kept(page: WebDriver) -> None:
    assert page.current_url.endswith("/app/")
    sign_in(page, "vg-not-a-key")
    until(page, lambda d: "refused" in d.find_element(By.ID, "api-key-error").text)
    assert "invalid API key" in page.find_element(By.ID, "api-key-error").text
    assert not page.find_element(By.ID, "app").is_displayed()

    signed_in(page)
    assert page.find_element(By.ID, "api-key-error").text == ""
    models = [o.get_attribute("value") for o in Select(page.find_element(By.ID, "model")).options]
    assert "videogen-tiny" in models
    # The model's limits fill the form: its sizes and lengths, its step range.
    sizes = [o.text for o in Select(page.find_element(By.ID, "size")).options]
    assert "256x256" in sizes and "64x64" in sizes
    assert "1 to " in page.find_element(By.ID, "help-steps").text
    # The key is remembered: a reload signs in by itself.
    page.refresh()
    until(page, lambda d: d.find_element(By.ID, "app").is_displayed())


def test_every_field_is_labelled_and_the_page_fits_a_phone(page: WebDriver) -> None:
    page.set_window_size(390, 844)
    signed_in(page)
    unlabelled = page.execute_script(
        "return [...document.querySelectorAll('input, select, textarea')]"
        ".filter(e => e.labels.length === 0).map(e => e.id)"
    )
    assert unlabelled == []
    width = page.execute_script("return [document.documentElement.scrollWidth, innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways on a phone: {width}"
    # Keyboard only: tab from the prompt reaches the model picker next.
    page.find_element(By.ID, "prompt").click()
    page.switch_to.active_element.send_keys("\t")
    assert page.switch_to.active_element.get_attribute("id") == "model"


def test_the_apis_validation_errors_show_next_to_their_field(page: WebDriver) -> None:
    signed_in(page)
    fill(page, "a red ball", steps="100000")
    page.find_element(By.ID, "create-button").click()
    error = page.find_element(By.ID, "error-num_inference_steps")
    until(page, lambda d: error.text != "")
    assert error.text.startswith("num_inference_steps:"), error.text
    assert page.find_element(By.ID, "num_inference_steps").get_attribute("aria-invalid") == "true"

    page.find_element(By.ID, "num_inference_steps").clear()
    page.find_element(By.ID, "prompt").clear()
    page.find_element(By.ID, "prompt").send_keys("   ")
    page.find_element(By.ID, "create-button").click()
    until(page, lambda d: "must not be empty" in d.find_element(By.ID, "error-prompt").text)
    assert page.find_element(By.ID, "error-num_inference_steps").text == ""
    assert page.find_elements(By.CSS_SELECTOR, ".card") == []


def test_a_video_is_watched_while_it_renders_then_plays(
    page: WebDriver, wapi: httpx.Client
) -> None:
    signed_in(page)
    card = create(page, "a red square moving right", seed="7", **WATCHED)
    seen = watch(page, card, lambda: card.get_attribute("data-status") == "completed", 120)
    steps = [int(m[1]) for s in seen if (m := re.match(r"Denoising: step (\d+) of 60", s))]
    assert len(set(steps)) >= 3 and steps == sorted(steps), seen
    assert any(s.startswith("Encoding") or s.startswith("Decoding") for s in seen), seen
    assert_plays(page, card, 2.0)
    v = wapi.get(f"/v1/videos/{job_id(card)}").json()
    assert v["status"] == "completed" and v["seed"] == 7 and v["size"] == "128x128"
    assert text(card, ".meta").startswith(v["model_version"])


def test_a_queued_job_shows_its_place_and_a_cancel_frees_its_gpu(
    page: WebDriver, wapi: httpx.Client
) -> None:
    signed_in(page)
    long = {"size": "128x128", "steps": "400"}
    busy = [create(page, f"a blue ball bouncing {i}", **long) for i in range(2)]
    for card in busy:  # both GPU workers
        until(page, lambda d, card=card: text(card, ".status").startswith("Denoising"), 60)
    waiting = create(page, "an orange triangle moving left", **long)
    place = r"Queued, 0 ahead(, starts in about \d+ (s|min))?"
    until(page, lambda d: re.fullmatch(place, text(waiting, ".status")), 30)

    busy[0].find_element(By.CSS_SELECTOR, ".cancel").click()
    until(page, lambda d: busy[0].get_attribute("data-status") == "cancelled", 30)
    assert text(busy[0], ".status") == "Cancelled"
    assert not busy[0].find_element(By.CSS_SELECTOR, ".cancel").is_displayed()
    assert busy[0].find_element(By.CSS_SELECTOR, ".delete").is_displayed()
    # The GPU it held goes to the job that waited.
    until(page, lambda d: text(waiting, ".status").startswith("Denoising"), 30)
    for card in (busy[1], waiting):
        card.find_element(By.CSS_SELECTOR, ".cancel").click()
        until(page, lambda d, card=card: card.get_attribute("data-status") == "cancelled", 30)
        assert wapi.get(f"/v1/videos/{job_id(card)}").json()["status"] == "cancelled"


async def test_a_failed_job_shows_its_error_code_and_message(
    wstack: Stack, page: WebDriver
) -> None:
    signed_in(page)
    card = create(page, "a red ball moving left", size="128x128", steps="400")
    until(page, lambda d: text(card, ".status").startswith("Denoising"), 60)
    client = await wstack.client()
    await client.get_workflow_handle(job_id(card)).terminate("stopped by an operator")
    until(page, lambda d: card.get_attribute("data-status") == "failed", 30)
    assert text(card, ".status") == "Failed"
    assert text(card, ".failure").startswith("terminated: "), text(card, ".failure")


async def test_a_gpu_worker_killed_mid_render_shows_resuming_then_completes(
    wstack: Stack, page: WebDriver, wapi: httpx.Client
) -> None:
    signed_in(page)
    card = create(page, "a green triangle moving up", seed="11", **WATCHED)
    job = job_id(card)
    wait_step(wapi, job, 12)
    client = await wstack.client()
    pid = await gpu_worker_pid(client, job)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    resuming = re.compile(r"resum(ing|ed) from step \d+")
    until(page, lambda d: resuming.search(text(card, ".detail")), 60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.save_screenshot(str(ARTIFACTS / "resuming.png"))  # the README's picture
    seen = watch(page, card, lambda: card.get_attribute("data-status") == "completed", 180)
    resumed = [s for s in seen if resuming.search(s)]
    assert resumed and "attempt 2" in resumed[-1], seen
    # Shown as a resume, never as a bar going back to the start.
    v = wait_for(wapi, job)
    assert v["attempt"] == 2 and v["resumed_from_step"] >= 8
    assert f"resumed from step {v['resumed_from_step']}" in text(card, ".detail")
    assert_plays(page, card, 2.0)


def test_the_page_reconnects_to_a_restarted_api_and_misses_nothing(
    wstack: Stack, page: WebDriver
) -> None:
    signed_in(page)
    card = create(page, "a purple ball moving down", seed="3", **WATCHED)
    until(page, lambda d: re.match(r"Denoising: step \d+", text(card, ".status")), 60)
    wstack.restart_api()  # its event streams end with a retry hint; the page reconnects
    # Whatever happened while the API was away (more steps, or the end), the card gets there.
    seen = watch(page, card, lambda: card.get_attribute("data-status") == "completed", 120)
    steps = [int(m[1]) for s in seen if (m := re.match(r"Denoising: step (\d+) of 60", s))]
    assert steps == sorted(steps), seen
    assert_plays(page, card, 2.0)


def test_the_gallery_lists_only_the_users_videos_a_page_at_a_time(
    wstack: Stack, page: WebDriver, wapi: httpx.Client
) -> None:
    small = {"prompt": "a yellow ball", "size": "64x64", "seconds": 1, "num_inference_steps": 2}
    with api_client(wstack, OTHER_KEY) as other:
        foreign = other.post("/v1/videos", json=small).json()["id"]
    mine = [wapi.post("/v1/videos", json={**small, "seed": i}).json()["id"] for i in range(13)]
    # Finished first: the list puts running jobs first, so jobs that end between two page
    # loads can move from one page to the next. The list reads Temporal's visibility store,
    # which may lag a moment behind.
    for job in mine:
        wait_for(wapi, job)
    deadline = time.monotonic() + 30
    while not set(mine) <= {v["id"] for v in wapi.get("/v1/videos?limit=100").json()["data"]}:
        assert time.monotonic() < deadline, "the API never listed the new jobs"
        time.sleep(0.2)
    signed_in(page)
    until(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 12)
    more = page.find_element(By.ID, "more")
    assert more.is_displayed()
    more.click()
    until(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) > 12)
    ids = {job_id(c) for c in page.find_elements(By.CSS_SELECTOR, ".card")}
    assert set(mine) <= ids and foreign not in ids
    until(page, lambda d: not d.find_element(By.ID, "more").is_displayed())
    # A finished one can be deleted from its card.
    newest = page.find_element(By.CSS_SELECTOR, f'.card[data-id="{mine[-1]}"]')
    assert newest.get_attribute("data-status") == "completed"
    newest.find_element(By.CSS_SELECTOR, ".delete").click()
    until(page, lambda d: not d.find_elements(By.CSS_SELECTOR, f'.card[data-id="{mine[-1]}"]'))
    assert wapi.get(f"/v1/videos/{mine[-1]}").status_code == 404


def test_the_page_is_served_offline_with_its_security_headers(wapi: httpx.Client) -> None:
    home = wapi.get("/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/app/"
    page = wapi.get("/app/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    # Everything the page loads comes from this origin: nothing from a CDN.
    assert re.findall(r'(?:src|href)="([^"]+)"', page.text) == ["app.css", "app.js"]
    script = wapi.get("/app/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert not set(wapi.get("/openapi.json").json()["paths"]) & {"/", "/app", "/app/"}
