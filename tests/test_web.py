"""The "Sales forecast" page in a real browser (Debian's headless Chromium driven by Playwright)
against a real gateway (`cd4ml serve` in a subprocess) on a trained work directory."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import GatewayProcess
from playwright.sync_api import Browser, Page, expect, sync_playwright

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("trained_workdir"),
    pytest.mark.usefixtures("chromium"),
]

CHROMIUM = Path("/usr/bin/chromium")
# How Chromium runs on these machines: no sandbox as root, no GPU, and no background
# connections (the network is closed; they would only be refused).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "web"


@pytest.fixture(scope="module")
def gateway(
    trained_workdir: Path,
    start_gateway: Callable[..., GatewayProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """`cd4ml serve` on a copy of the trained work directory (the gateway writes its log there)."""
    workdir = tmp_path_factory.mktemp("web") / "work"
    shutil.copytree(trained_workdir, workdir)
    return start_gateway(workdir, "--poll", "0").url


@pytest.fixture(scope="session")
def chromium(require_service: Callable[[str, Callable[[], object]], None]) -> Path:
    """Debian's Chromium (Playwright cannot download its own browser on these machines).

    Used by every test of the module first, so a missing browser skips (or fails, under CI=true)
    before the work directory is trained.
    """

    def installed() -> None:
        if not CHROMIUM.exists():
            raise FileNotFoundError(f"{CHROMIUM} is missing; `make browser` (apt-get install chromium) installs it")

    require_service("Chromium", installed)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, gateway: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    opened.goto(gateway)
    expect(opened.locator("#live")).to_contain_text("champion sales-forecaster v1")
    yield opened
    context.close()


@pytest.fixture(scope="module")
def catalog(gateway: str) -> dict:
    return httpx.get(f"{gateway}/api/catalog", timeout=10).json()


def labels(catalog: dict, key: str) -> dict:
    """{value: label} of one series key, as the page's datalist offers them."""
    (field,) = (k for k in catalog["keys"] if k["name"] == key)
    return {o["value"]: o["label"] for o in field["options"]}


def pick(page: Page, key: str, typed: str, label: str) -> None:
    """Type part of a label, check the page suggests the option, and take it.

    Headless Chromium draws no datalist popup to click, so taking the suggestion is filling
    the input with its label, as clicking it would.
    """
    field = page.locator(f"#key-{key}")
    field.click()
    field.press_sequentially(typed)
    offered = page.locator(f"#key-{key}-options option").evaluate_all("os => os.map(o => o.value)")
    assert label in [o for o in offered if typed.lower() in o.lower()]
    field.fill(label)


def test_forecast_from_the_page_equals_the_api(page: Page, gateway: str, catalog: dict) -> None:
    store, item = (int(v) for v in catalog["series"][0].split("|"))
    store_label, item_label = labels(catalog, "store_nbr")[store], labels(catalog, "item_nbr")[item]
    day = catalog["dates"]["min"]
    pick(page, "store_nbr", store_label.split(" · ")[0], store_label)  # the city
    pick(page, "item_nbr", item_label.split(" · ")[0].lower(), item_label)  # the family
    page.fill("#date", day)
    with page.expect_response(lambda r: "/predict" in r.url) as answer:
        page.click("#submit")
    shown = answer.value.json()

    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#chart rect")).to_have_count(len(shown["predictions"][0]["contributions"]))
    assert page.locator("#error").inner_text() == ""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "sales-forecast.png"), full_page=True)

    row = {"store_nbr": store, "item_nbr": item, "date": day, "onpromotion": 0}
    direct = httpx.post(f"{gateway}/predict", json={"rows": [row]}, timeout=10).json()
    value = direct["predictions"][0]["prediction"]
    assert shown["predictions"][0]["prediction"] == value
    assert float(page.locator("#prediction").inner_text()) == round(value, 1)
    version = direct["model"]["version"]
    assert page.locator("#model").inner_text().startswith(f"by sales-forecaster v{version}")


def choose(page: Page, catalog: dict, store: int, item: int) -> None:
    page.fill("#key-store_nbr", labels(catalog, "store_nbr")[store])
    page.fill("#key-item_nbr", labels(catalog, "item_nbr")[item])


def test_invalid_choice_shows_an_error_and_hides_the_last_result(page: Page, catalog: dict) -> None:
    store, item = (int(v) for v in catalog["series"][0].split("|"))
    choose(page, catalog, store, item)
    page.click("#submit")
    expect(page.locator("#result")).to_be_visible()

    page.fill("#key-store_nbr", "Atlantis")
    page.click("#submit")
    expect(page.locator("#error")).to_have_text("choose a store_nbr from the list")
    expect(page.locator("#result")).to_be_hidden()


def test_unknown_series_shows_the_gateway_error_and_no_result(page: Page, catalog: dict) -> None:
    """A store and an item that both exist, but the store never sold the item."""
    sold = set(catalog["series"])
    pairs = ((s, i) for s in labels(catalog, "store_nbr") for i in labels(catalog, "item_nbr"))
    store, item = next((s, i) for s, i in pairs if f"{s}|{i}" not in sold)
    choose(page, catalog, store, item)
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("unknown")
    expect(page.locator("#result")).to_be_hidden()


def test_names_from_the_data_are_shown_as_text_never_as_markup(page: Page, catalog: dict) -> None:
    """Column names and feature names come from the user's CSV: a header holding markup is
    shown as written, in labels and in the explanation chart, and nothing of it runs."""
    hostile = '<img src=x onerror="window.pwned = 1">'
    store_key, item_key = catalog["keys"]
    keys = [store_key, item_key | {"name": f"item {hostile}"}]
    page.route("**/api/catalog", lambda route: route.fulfill(json=catalog | {"covariates": [hostile], "keys": keys}))
    answer = {
        "request_id": "0" * 32,
        "arm": "champion",
        "model": {"name": "sales-forecaster", "version": "1"},
        "predictions": [{"prediction": 1.0, "contributions": [{"feature": hostile, "value": 0.5}]}],
    }
    page.route(re.compile(r"/predict\?explain=true$"), lambda route: route.fulfill(json=answer))
    page.reload()
    expect(page.locator("#covariates label")).to_have_text(hostile)
    expect(page.locator("#fields label").nth(1)).to_have_text(f"item {hostile}")
    page.fill(f"[id='key-{store_key['name']}']", store_key["options"][0]["label"])
    page.locator("#fields input").nth(1).fill(item_key["options"][0]["label"])
    page.click("#submit")
    expect(page.locator("#chart text").first).to_have_text(hostile)
    assert page.locator("img").count() == 0
    assert page.evaluate("window.pwned") is None
