"""`gptoss inspect` and its report: written from a checkpoint of either architecture, and opened in
a real browser (headless chromium) without errors, every picture loaded."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from gptoss.cli import main
from gptoss.config import GPTConfig
from gptoss.data.tokenizers import build_tokenizer
from gptoss.model import GPT

PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"


def save_checkpoint(directory: Path, preset: str, text: str) -> Path:
    """A small random model of `preset` with a character tokenizer of `text`, saved as a checkpoint."""
    tokenizer = build_tokenizer("char", text=text)
    torch.manual_seed(0)
    config = GPTConfig.preset(preset, vocab_size=tokenizer.vocab_size, max_seq_len=128, **({"sliding_window": 16} if preset == "gpt-oss-tiny" else {}))
    GPT(config).save_pretrained(directory, format="gptoss", tokenizer=tokenizer)
    return directory


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """The report of each architecture, written by the command line."""
    out = {}
    for preset in ("tiny", "gpt-oss-tiny"):
        root = tmp_path_factory.mktemp(preset)
        checkpoint = save_checkpoint(root / "checkpoint", preset, PROMPT)
        assert main(["inspect", "--checkpoint", str(checkpoint), "--prompt", PROMPT, "--out", str(root / "report")]) == 0
        out[preset] = root / "report"
    return out


def test_report_has_every_view(reports):
    tiny = sorted(p.name for p in reports["tiny"].iterdir())
    assert tiny == ["attention_layer0.png", "attention_layer1.png", "attention_layer2.png", "attention_layer3.png",
                    "index.html", "logit_lens.png", "positions.png"]  # fmt: skip
    gpt_oss = sorted(p.name for p in reports["gpt-oss-tiny"].iterdir())
    assert set(gpt_oss) == set(tiny) | {"sinks.png", "experts.png", "expert_load.png"}
    page = (reports["gpt-oss-tiny"] / "index.html").read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == len(gpt_oss) - 1  # self-contained
    assert "sliding window 16" in page and "8 experts, top-2" in page


def test_bad_prompts_are_user_errors(tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "checkpoint", "tiny", PROMPT)
    assert main(["inspect", "--checkpoint", str(checkpoint), "--prompt", "", "--out", str(tmp_path / "r")]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
    assert main(["inspect", "--checkpoint", str(checkpoint), "--prompt", "a" * 200, "--out", str(tmp_path / "r")]) == 2
    assert "give a shorter --prompt" in capsys.readouterr().err


def browser():
    """Headless chromium through selenium; required (a failure, not a skip) when GPTOSS_SHARED_DATA
    is set, as the full suite runs (Debian's chromium and chromium-driver)."""
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if webdriver is None or driver_path is None or shutil.which("chromium") is None:
        message = "headless chromium is not installed (selenium, and Debian's chromium chromium-driver)"
        if os.environ.get("GPTOSS_SHARED_DATA"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.mark.parametrize("preset", ["tiny", "gpt-oss-tiny"])
def test_report_opens_in_a_browser_without_errors(reports, preset):
    driver = browser()
    try:
        driver.set_page_load_timeout(30)
        driver.get((reports[preset] / "index.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);"
        )
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        title = driver.title
    finally:
        driver.quit()
    assert title.startswith("gptoss inspect")
    assert len(images) == len(list(reports[preset].glob("*.png")))
    assert all(complete and width > 0 for _, complete, width in images), images
    assert errors == []
