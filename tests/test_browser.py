"""The UIs in a real browser: Debian's headless Chromium driven by Playwright against `stack start`.

A person opens the post-train deployment in the Prefect UI, fills its form (params file, profile from a select,
one expert from a multi-select), submits, and sees the run complete and its report artifact render; then opens
the MLflow UI on the registered model and sees the version with its `champion` alias. Screenshots land in
outputs/test-artifacts/browser/ (docs/figures/ holds two of them for the README).

Needs /usr/bin/chromium (`apt-get install chromium`; `.ci/run` installs it and sets POSTTRAIN_REQUIRE_BROWSER=1,
which turns a missing browser from a skip into a failure).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, prefect_api_call
from tests.test_cli import flows
from tests.test_stack import start_stack, wait_for_final_state

SCREENSHOTS = REPO / "outputs" / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# what the machine's closed network needs: no background connections, no GPU, no sandbox as root
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MODEL_NAME = "browser-tiny"

if CHROMIUM is None and not os.environ.get("POSTTRAIN_REQUIRE_BROWSER"):
    pytest.skip("no Chromium here (apt-get install chromium)", allow_module_level=True)


def short_pipeline_params(params_file: Path) -> None:
    """The tiny profile with no safety stage and the math expert shipped: the form picks the expert."""
    params = yaml.safe_load(params_file.read_text())
    tiny = params["profiles"]["tiny"]
    tiny["safety"]["realign"]["model"] = None
    tiny["safety"]["prune"]["model"] = None
    tiny["registry"].update(candidate="math", model_name=MODEL_NAME)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def choose(page, prop, option: str) -> None:
    """Pick `option` in the form property's select (the list opens on a key press)."""
    prop.locator(".p-select-button__control").click()
    page.keyboard.press("ArrowDown")
    page.locator(".p-select-option", has_text=option).first.click()
    page.get_by_text("Parameters", exact=True).click()  # closes the list (Escape would leave Submit inert)


def submit(page, tries: int = 3) -> dict:
    """Click Submit; the flow run the server created. A 503 is Prefect's "retry me" (SQLite busy under load: the
    Python client retries it by itself, the UI shows a toast), so a person clicks again, as here."""
    for _ in range(tries):
        with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/create_flow_run")) as sent:
            page.get_by_role("button", name="Submit").click()
        response = sent.value
        if response.status != 503:
            break
        page.wait_for_timeout(2000)
    assert response.ok, f"create_flow_run answered {response.status}: {response.text()}"
    return response.json()


def test_a_person_runs_the_pipeline_from_the_prefect_form_and_finds_the_champion_in_mlflow(
    tmp_path: Path, params_file: Path, monkeypatch
):
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM, "POSTTRAIN_REQUIRE_BROWSER is set but there is no chromium on PATH"
    monkeypatch.setenv("PREFECT_WORKER_QUERY_SECONDS", "2")
    short_pipeline_params(params_file)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "stack"
    started, prefect_port, mlflow_port = start_stack(home)
    prefect_ui, mlflow_ui = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
    try:
        assert started.returncode == 0, started.stderr
        deployment = prefect_api_call(f"{prefect_ui}/api", "get", "deployments/name/post-train/post-train")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)

            page.goto(f"{prefect_ui}/deployments/deployment/{deployment['id']}/run", wait_until="networkidle")

            def prop(label: str):
                name = page.locator(".schema-form-property__label", has_text=label)
                return page.locator(".schema-form-property", has=name).first

            prop("params_file").locator("textarea").fill(str(params_file))
            expect(prop("profile").locator(".p-select-button__control")).to_contain_text("smol")  # params.yaml's
            choose(page, prop("profile"), "tiny")
            choose(page, prop("experts"), "math")
            expect(prop("profile").locator(".p-select-button__control")).to_contain_text("tiny")
            expect(prop("experts")).to_contain_text("math")
            page.screenshot(path=SCREENSHOTS / "prefect-form.png")

            flow_run = submit(page)
            assert flow_run["parameters"]["profile"] == "tiny" and flow_run["parameters"]["experts"] == ["math"]
            page.wait_for_url("**/deployments/deployment/**")  # the UI goes on to the deployment's runs
            done = wait_for_final_state(f"{prefect_ui}/api", flow_run["id"])
            assert done["state"]["type"] == "COMPLETED", done["state"]["message"]

            (report,) = prefect_api_call(
                f"{prefect_ui}/api",
                "post",
                "artifacts/filter",
                {"artifacts": {"key": {"any_": ["post-train-report"]}, "flow_run_id": {"any_": [flow_run["id"]]}}},
            )
            page.goto(f"{prefect_ui}/artifacts/artifact/{report['id']}", wait_until="networkidle")
            expect(page.get_by_role("heading", name="Post-train run (tiny)")).to_be_visible()
            expect(page.get_by_text(f"models:/{MODEL_NAME}/1", exact=True)).to_be_visible()
            expect(page.get_by_role("heading", name="Gate report: math")).to_be_visible()
            figures = page.locator("img")
            expect(figures).to_have_count(3)  # safety vs utility, loss curves, task-vector norms, inlined
            assert all(img.evaluate("i => i.complete && i.naturalWidth > 0") for img in figures.all())
            page.screenshot(path=SCREENSHOTS / "prefect-report.png")

            page.goto(f"{mlflow_ui}/#/models/{MODEL_NAME}")
            version = page.get_by_role("row", name="Version 1")
            expect(version).to_contain_text("champion")
            page.screenshot(path=SCREENSHOTS / "mlflow-model.png")
            browser.close()
    finally:
        stopped = flows("stack", "stop", "--home", str(home))
    assert stopped.returncode == 0
