"""The model card from real component outputs: its sections, escaping, and the page in headless Chromium.

The browser test needs Debian's `chromium` and `chromium-driver`; `make test` installs them
(`make browser`). It is never skipped: without them it fails and names the install command.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from components.bias import audit_bias, plot_group_rates
from components.comparison import compare_models, slice_frame
from components.config import BiasGate, EvaluationGate
from components.evaluation import plot_confusion_matrix
from components.explain import permutation_importance, plot_explanation
from components.features import TabularPreprocessor
from components.gates import Check, GateReport
from components.model_card import SECTIONS, ModelCardInputs, render_model_card
from components.predictor import Predictor
from components.promotion import decide_promotion, evaluation_gate

INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver (or: make browser)"
EVIL = "<script>alert('card')</script>"


def _rows(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "checks": rng.integers(0, 7, size=n),
            "employed": rng.choice(["Yes", "No"], size=n),
            "age": rng.integers(18, 70, size=n),
            "colour": rng.choice(["Black", "White"], size=n, p=[0.3, 0.7]),
            "sex": rng.choice(["Female", "Male"], size=n, p=[0.2, 0.8]),
        }
    )
    frame["released"] = np.where(frame["checks"] < 3, "Yes", "No")
    return frame


def _predictor(frame: pd.DataFrame) -> Predictor:
    """A fixed linear model: released when few checks (it reads `checks` only)."""
    preprocessor = TabularPreprocessor.fit(frame, ["checks", "employed", "age"])
    net = nn.Linear(preprocessor.width, 2)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        slot = preprocessor.column_slots()["checks"].start
        net.weight[0, slot] = 3.0  # "No" grows with the (standardised) number of checks
    return Predictor(net, preprocessor, ["No", "Yes"], "linear", {}, positive_class="Yes")


def card_inputs(*, champion: bool = True, reason: str | None = None) -> ModelCardInputs:
    """A card built the way the flow builds it, from real component outputs on synthetic rows."""
    frame = _rows()
    predictor = _predictor(frame)
    y_true = (frame["released"] == "Yes").to_numpy().astype(np.int64)
    proba = predictor.predict_proba(frame, strict=False)
    rng = np.random.default_rng(1)
    champion_proba = np.clip(proba + rng.normal(0, 0.3, size=proba.shape), 0.01, None) if champion else None
    slices = slice_frame(frame, ["colour", "sex"])
    comparison = compare_models(y_true, proba, champion_proba, ["No", "Yes"], slices, n_resamples=200)
    gate = EvaluationGate(min_accuracy=0.6, min_macro_f1=0.5, max_regression=0.05)
    evaluation = evaluation_gate(comparison, gate)
    champion_pred = None if champion_proba is None else champion_proba.argmax(axis=1)
    bias = audit_bias(
        y_true,
        proba.argmax(axis=1),
        frame[["colour", "sex"]],
        BiasGate(min_group_size=10, n_bootstrap=200, max_fairness_regression=0.2),
        champion_pred=champion_pred,
    )
    serving = GateReport("serving", [Check("parity", True, "max |served - offline| 0.00e+00 on 64 rows")])
    if reason is not None:
        serving.checks.append(Check("injected", False, reason))
    decision = decide_promotion(
        comparison.challenger, comparison.champion, [evaluation, bias, serving], gate, "3" if champion else None
    )
    validation = GateReport(
        "validation", [Check("columns", True, "the columns are the reference's")], figures={"rows": 400.0}
    )
    labels = GateReport("labels", [Check("min_per_class", True, "every class has at least 50 rows")])
    noise = GateReport("label_noise", [Check("max_noise_rate", True, "estimated noise 0.0100 meets <= 0.0650")])
    drift = GateReport("drift", [Check("reference", True, "no champion yet")], applicable=False)
    importance = permutation_importance(predictor, frame, y_true, seed=0)
    return ModelCardInputs(
        pipeline="toronto",
        version="4",
        lineage={"data_version": "0123abcd", "git_commit": "feedbeef", "config_hash": "c0ffee", "rows": "400"},
        gates=[validation, drift, labels, noise, evaluation, bias, serving],
        comparison=comparison,
        decision=decision,
        bias=bias,
        fairness_figure=plot_group_rates(bias),
        explanation=importance,
        explanation_figure=plot_explanation(importance),
        evaluation_figures={"confusion_matrix": plot_confusion_matrix(comparison.challenger)},
        description="Whether an arrestee is released with a summons.",
    )


@pytest.fixture(scope="module")
def card() -> str:
    return render_model_card(card_inputs(reason=EVIL))


def test_every_section_is_there_in_order(card: str) -> None:
    found = re.findall(r'<section id="([a-z]+)">', card)
    assert found == list(SECTIONS)
    for title in SECTIONS.values():
        assert f"<h2>{title}</h2>" in card


def test_the_page_is_self_contained_and_escapes_run_text(card: str) -> None:
    assert "<script" not in card  # the injected reason is shown as text
    assert "&lt;script&gt;alert(&#x27;card&#x27;)&lt;/script&gt;" in card
    assert not re.search(r"(src|href)=\"https?:", card)  # no CDN, no remote image
    images = re.findall(r'<img src="([^"]+)"', card)
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,") for src in images)


def test_the_card_shows_what_the_run_decided(card: str) -> None:
    assert "REJECT against champion version 3" in card  # the injected serving failure blocks
    assert "0123abcd" in card and "feedbeef" in card
    assert "checks" in card and "employed" in card  # raw column names in the importance table
    assert "colour=Black &amp; sex=Female" in card  # an intersection slice
    for gate in ("validation", "drift", "labels", "label_noise", "evaluation", "bias", "serving"):
        assert f'id="gate-{gate}"' in card


def test_a_first_model_has_no_champion_columns() -> None:
    page = render_model_card(card_inputs(champion=False))
    assert "PROMOTE (no champion yet)" in page
    assert "no champion yet: absolute floors only" in page
    assert ">champion</th>" not in page and ">change</th>" not in page  # no empty columns


def test_a_gate_that_did_not_apply_says_why() -> None:
    inputs = card_inputs()
    inputs.gates = [g for g in inputs.gates if g.gate != "bias"]
    inputs.gates.append(
        GateReport("bias", [Check("multiclass", True, "bias audit covers binary classifiers only")], applicable=False)
    )
    inputs.bias, inputs.fairness_figure, inputs.explanation = None, None, None
    page = render_model_card(inputs)
    assert "Not applicable: bias audit covers binary classifiers only." in page
    assert "not applicable: no champion yet" in page  # the drift gate's reason, in the gates table
    assert "no explanation method covers this model" in page


# --- the page in a browser --------------------------------------------------------------------


def chromium_driver(user_data_dir: Path):
    """Headless Chromium driven by Selenium through Debian's chromedriver (no download, no network)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail(f"headless Chromium is needed for this test and is not installed: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={user_data_dir}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_card_renders_in_headless_chromium(card: str, tmp_path: Path) -> None:
    page = tmp_path / "model_card.html"
    page.write_text(card, encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        driver = chromium_driver(Path(profile))
        try:
            driver.get(page.as_uri())
            assert driver.title == "Model card: toronto v4"
            for key, title in SECTIONS.items():
                section = driver.find_element("id", key)
                assert section.is_displayed(), key
                assert section.find_element("tag name", "h2").text == title
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);"
            )
            assert len(images) == 3
            broken = [alt for alt, complete, width, height in images if not (complete and width > 0 and height > 0)]
            assert broken == []
            assert driver.execute_script("return document.scripts.length;") == 0
            assert EVIL in driver.find_element("id", "gate-serving").text  # shown, not run
            # Nothing was fetched: the figures are data URIs, the style is inline.
            fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
            assert [url for url in fetched if not url.startswith("data:")] == []
        finally:
            driver.quit()
