"""The web demo (``apps.demo``) on a tiny untrained model: its callbacks called directly (fast),
then the real page in a headless Chromium driven by Selenium, as a quality engineer uses it:
upload, inspect, read the decision and the overlay, ask a follow-up, and upload a file that is
no image."""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from helpers.models import tiny_detector
from helpers.serving import bomb_png, free_port
from PIL import Image

from vmad_pipeline.apps import demo
from vmad_pipeline.images import read_rgb

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (  # this machine has no network: without these Chromium hangs on start
    "--headless=new --no-sandbox --disable-gpu --disable-quic --no-first-run "
    "--disable-background-networking --disable-component-update --disable-sync "
    "--disable-dev-shm-usage --window-size=1280,1400"
).split()
WAIT_S = 60
H, W = 40, 48
SCORE = re.compile(r"Score \*{0,2}(\d+\.\d+)")
PAGE_IDS = {
    "image",
    "category",
    "inspect",
    "decision",
    "significance",
    "overlay",
    "chat",
    "question",
    "references",
}


@pytest.fixture(scope="module")
def detector():
    return tiny_detector()


@pytest.fixture(scope="module")
def cue_detector():
    """A small untrained model that reads normal references."""
    import dataclasses

    import torch
    from helpers.models import SMALL_CFG, tiny_tokenizer

    from vmad_pipeline.configs.evaluate import EvaluateConfig
    from vmad_pipeline.configs.model import ReferenceCueConfig
    from vmad_pipeline.inference.service import Detector
    from vmad_pipeline.models.build import build_vmad

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL_CFG, references=ReferenceCueConfig(enabled=True))
    model = build_vmad(cfg, tok, train_classes=["screw"]).eval()
    return Detector.for_model(model, tok, EvaluateConfig(max_new_tokens=3), strict=False)


pytestmark = pytest.mark.usefixtures("gradio_cache")


def write_png(path: Path, h: int = H, w: int = W) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def not_an_image(path: Path) -> Path:
    path.write_text("this is a text file with an image's name")
    return path


# --- the callbacks, without a browser ---------------------------------------------------------


def test_uploaded_normal_references_are_read_and_decide(cue_detector, tmp_path):
    cue = cue_detector
    image = str(write_png(tmp_path / "part.png"))
    refs = [str(write_png(tmp_path / f"ref{i}.png", w=W + i)) for i in range(3)]
    conversation, decision, *_ = demo.on_inspect(cue, image, "screw", refs)
    assert "Compared with 3 uploaded normal image(s)" in decision
    cut = conversation.references.threshold
    assert f"threshold {cut:.3f}" in decision and conversation.image_threshold == cut
    assert conversation.inspection.anomalous == (conversation.inspection.score >= cut)
    with pytest.raises(gr.Error, match="at most 16"):
        demo.on_inspect(cue, image, "screw", refs * 6)
    with pytest.raises(gr.Error, match="bad.png"):
        demo.on_inspect(cue, image, "screw", [*refs, str(not_an_image(tmp_path / "bad.png"))])


def test_references_for_a_model_that_reads_none_are_a_readable_error(detector, tmp_path):
    image = str(write_png(tmp_path / "part.png"))
    with pytest.raises(gr.Error, match="reads no references"):
        demo.on_inspect(detector, image, "screw", [image])


def test_the_page_has_the_elements_users_and_the_browser_test_rely_on(detector, tmp_path):
    example = write_png(tmp_path / "data/01_raw/synthetic/pcb/test/good/000.png")
    app = demo.build_app(detector, examples=[str(example)])
    assert isinstance(app, gr.Blocks)
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert PAGE_IDS <= ids
    assert app.analytics_enabled is False
    assert not Path(demo.__file__).with_suffix(".pyi").exists()  # Gradio stubs a subclass there


def test_inspect_shows_the_decision_its_score_the_overlay_and_the_first_turn(detector, tmp_path):
    path = write_png(tmp_path / "part.png")
    conversation, decision, significance, overlay, chat = demo.on_inspect(detector, str(path), "")
    first = conversation.inspection
    assert decision.startswith("## Anomalous" if first.anomalous else "## Normal")
    assert float(SCORE.search(decision).group(1)) == pytest.approx(first.score, abs=1e-3)
    assert "threshold 0.500" in decision
    assert f"{100 * first.mask_fraction:.2f} %" in significance
    overlay = np.asarray(overlay)
    assert overlay.shape == (H, W, 3) and overlay.dtype == np.uint8  # at the image's own size
    assert chat[0] == {"role": "user", "content": "Is there any defect in the object?"}
    assert chat[1]["role"] == "assistant" and chat[1]["content"]  # never an empty bubble


def test_two_identical_inspections_are_served_from_two_files(detector, tmp_path, monkeypatch):
    """Gradio 6 writes an output image to a path named by its bytes' hash, truncating and
    rewriting it in place: two users inspecting the same image at once had one of them download
    a file while the other's rewrite emptied it (CI, stop 33: "peer closed connection"). Each
    inspection's overlay is its own file, the pixels the same."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    path = str(write_png(tmp_path / "part.png"))
    with gr.Blocks():
        _, _, overlay = demo._outputs(gr)
    served = [overlay.postprocess(demo.on_inspect(detector, path, "")[3]).path for _ in range(2)]
    assert served[0] != served[1]
    assert np.array_equal(read_rgb(served[0]), read_rgb(served[1]))


def test_an_upload_is_read_as_everywhere_else_16_bit_included(detector, tmp_path):
    """A 16-bit PNG is scaled to 8 bits by ``read_rgb`` (Gradio's own conversion would clip it
    white): the page must score the image every other reader sees."""
    path = tmp_path / "deep.png"
    ramp = np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    upload = demo._upload(gr)
    payload = gr.Image.data_model(path=str(path), orig_name="deep.png")
    assert upload.preprocess(payload) == str(path)  # handed over undecoded
    conversation = demo.on_inspect(detector, upload.preprocess(payload), "screw")[0]
    expected = detector.inspect([read_rgb(path)], ["screw"])[0]
    assert conversation.inspection.score == pytest.approx(expected.score)
    np.testing.assert_array_equal(conversation.inspection.overlay, expected.overlay)


def test_a_file_that_is_no_image_is_a_readable_error(detector, tmp_path):
    bad = not_an_image(tmp_path / "bad.png")
    with pytest.raises(gr.Error) as refused:
        demo.on_inspect(detector, str(bad), "pcb")
    message = refused.value.message
    assert "Not an image this demo can read" in message and "bad.png" in message
    assert str(tmp_path) not in message  # the file's name, not Gradio's cache path
    with pytest.raises(gr.Error, match="Upload an image"):
        demo.on_inspect(detector, None, "pcb")

    bomb = tmp_path / "bomb.png"  # 60,000 x 60,000 pixels in a few kB: refused from its header
    bomb.write_bytes(bomb_png())
    with pytest.raises(gr.Error, match="over this demo's limit") as refused:
        demo.on_inspect(detector, str(bomb), "pcb")
    assert str(tmp_path) not in refused.value.message and "bomb.png" in refused.value.message
    good = str(write_png(tmp_path / "a.png"))
    for name, reason in (("x" * 10_000, "10000 characters"), ("pcb [SEG]", "may not contain")):
        with pytest.raises(gr.Error, match=reason):  # the one rule for a user's text
            demo.on_inspect(detector, good, name)


def test_follow_ups_keep_the_conversation_and_refusals_leave_it_shown(detector, tmp_path):
    conversation = demo.on_inspect(detector, str(write_png(tmp_path / "a.png")), "screw")[0]
    chat, _, box = demo.on_ask(conversation, "Where is it?")
    assert [m["content"] for m in chat][2] == "Where is it?" and len(chat) == 4
    assert box == ""  # the question box is cleared for the next one
    with pytest.warns(UserWarning, match=r"may not contain &lt;image&gt;"):
        refused = demo.on_ask(conversation, "<image> what is this?")
    assert refused == (gr.skip(),) * 3  # the chat and the question stay as they were
    assert len(conversation.turns) == 2
    with pytest.warns(UserWarning, match="Inspect an image first"):
        demo.on_ask(None, "Where is it?")


def test_examples_show_a_defect_of_each_class_first(tmp_path):
    for name in ("pcb/test/good/000.png", "pcb/test/good/001.png", "pcb/test/scratch/000.png"):
        write_png(tmp_path / "data/01_raw/synthetic" / name, 8, 8)
    for name in ("cap/test/crack/000.png", "cap/test/dent/000.png", "cap/test/good/000.png"):
        write_png(tmp_path / "data/01_raw/synthetic" / name, 8, 8)
    found = [Path(p).relative_to(tmp_path).parts[-4:] for p in demo.example_images(tmp_path, 5)]
    assert [(c, d) for c, _, d, _ in found] == [
        ("cap", "crack"),
        ("pcb", "scratch"),
        ("cap", "dent"),
        ("cap", "good"),
        ("pcb", "good"),
    ]
    assert demo.example_images(tmp_path / "nowhere") == []
    splits = tmp_path / "data/05_model_input/splits.json"  # pcb unseen: its images first
    splits.parent.mkdir(parents=True)
    splits.write_text('{"test_classes": ["pcb"], "train_classes": ["cap"]}')
    found = [Path(p).relative_to(tmp_path).parts[-4:] for p in demo.example_images(tmp_path, 3)]
    assert [(c, d) for c, _, d, _ in found] == [
        ("pcb", "scratch"),
        ("pcb", "good"),
        ("cap", "crack"),
    ]
    shown = demo.example_images(tmp_path, 3)
    label = demo.examples_label(tmp_path, shown)
    assert label == "Example images (first: pcb, classes the model never saw in training)"
    assert demo.examples_label(tmp_path / "nowhere", shown) == "Example images"


# --- the real page in a headless browser ------------------------------------------------------


def serve(detector):
    """The demo served as ``vmad-pipeline demo`` serves it, on a free port, from a thread: its
    URL, then closed."""
    port = free_port()
    app = demo.launch(detector, port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@pytest.fixture
def page_url(detector):
    yield from serve(detector)


@pytest.fixture
def browser(tmp_path):
    """Debian's Chromium driven by Selenium through Debian's chromedriver (nothing downloaded)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(
            f"no browser to drive: {', '.join(missing)} absent (apt-get install chromium "
            "chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, what: str):
    """``condition(driver)`` once truthy (its value), else a failure naming what never came."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(condition)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text
        pytest.fail(f"{what} did not appear within {WAIT_S} s; the page reads:\n{body}")


def loaded_image(driver, selector: str):
    """The first ``<img>`` under ``selector`` once the browser has decoded it, else None."""
    for img in driver.find_elements("css selector", f"{selector} img"):
        if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img):
            return img
    return None


def bot_messages(driver) -> list[str]:
    return [m.text for m in driver.find_elements("css selector", "#chat [data-testid='bot']")]


def upload(driver, path: Path) -> None:
    """Choose ``path`` in the image's file input, once it is there (after a removal it comes
    back), and wait for the page to show something for it."""
    field = wait_for(
        driver, lambda d: d.find_elements("css selector", "#image input[type=file]"), "the upload"
    )
    field[0].send_keys(str(path))
    wait_for(
        driver, lambda d: d.find_elements("css selector", "#image img"), "the upload's preview"
    )


def decision(driver) -> str | None:
    """The decision as shown, once it carries a score."""
    text = driver.find_element("id", "decision").text
    return text if SCORE.search(text) else None


@pytest.mark.slow
def test_a_user_inspects_an_image_and_chats_about_it_in_a_real_browser(browser, page_url, tmp_path):
    browser.get(page_url)
    wait_for(browser, lambda d: d.find_elements("id", "inspect"), "the page")
    upload(browser, write_png(tmp_path / "part.png"))
    browser.find_element("css selector", "#category textarea").send_keys("pcb")
    browser.find_element("id", "inspect").click()

    shown = wait_for(browser, decision, "the decision with its score")
    assert re.search(r"\b(Anomalous|Normal)\b", shown), shown
    assert "threshold 0.500" in shown
    overlay = wait_for(browser, lambda d: loaded_image(d, "#overlay"), "the overlay image")
    assert browser.execute_script("return arguments[0].naturalWidth", overlay) == W
    assert "% of the image's pixels" in browser.find_element("id", "significance").text
    assert len(wait_for(browser, bot_messages, "the first answer")) == 1

    browser.find_element("css selector", "#question textarea").send_keys("Where is the defect?")
    browser.find_element("id", "ask").click()
    wait_for(browser, lambda d: len(bot_messages(d)) == 2, "the follow-up's answer")
    assert "Where is the defect?" in browser.find_element("id", "chat").text
    shot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5_000

    browser.find_element("css selector", "#image button[aria-label='Remove Image']").click()
    upload(browser, not_an_image(tmp_path / "notes.png"))
    browser.find_element("id", "inspect").click()
    toasts = "[data-testid='toast-body']"
    toast = wait_for(
        browser,
        lambda d: [t.text for t in d.find_elements("css selector", toasts) if t.text.strip()],
        "the error message",
    )
    assert any("Not an image this demo can read" in t and "notes.png" in t for t in toast), toast
    assert "Traceback" not in browser.find_element("tag name", "body").text


@pytest.fixture
def cue_page_url(cue_detector):
    yield from serve(cue_detector)


@pytest.mark.slow
def test_a_user_inspects_against_uploaded_normal_images_in_a_real_browser(
    browser, cue_page_url, tmp_path
):
    browser.get(cue_page_url)
    wait_for(browser, lambda d: d.find_elements("id", "inspect"), "the page")
    upload(browser, write_png(tmp_path / "part.png"))
    refs = [write_png(tmp_path / f"ref{i}.png", w=W + i) for i in range(3)]
    field = wait_for(
        browser,
        lambda d: d.find_elements("css selector", "#references input[type=file]"),
        "the references' upload",
    )
    field[0].send_keys("\n".join(str(r) for r in refs))
    wait_for(
        browser,
        lambda d: all(r.stem in d.find_element("id", "references").text for r in refs),
        "the uploaded references listed",
    )
    browser.find_element("css selector", "#category textarea").send_keys("screw")
    browser.find_element("id", "inspect").click()
    shown = wait_for(browser, decision, "the decision with its score")
    assert "Compared with 3 uploaded normal image(s)" in shown, shown


@pytest.mark.slow
def test_the_page_fetches_no_font_and_renders_within_two_seconds(page_url, tmp_path):
    """The theme names the system's fonts: no stylesheet declares a font file to fetch, so
    text renders at once (a headless screenshot once showed "Loading..." until a long
    virtual-time budget let web fonts time out). A plain headless screenshot is blank: the page
    is drawn by its script after the load event; 2 s of virtual time draw all of it."""
    import subprocess

    import httpx

    page = httpx.get(page_url, timeout=WAIT_S).text
    sheets = [s for s in re.findall(r'href="([^"]+\.css)"', page)] + ["theme.css"]
    for sheet in sheets:
        css = httpx.get(page_url + sheet.removeprefix("./"), timeout=WAIT_S).text
        assert "@font-face" not in css and "fonts.googleapis" not in css, sheet
    if not CHROMIUM.is_file():
        pytest.skip(f"no {CHROMIUM} for the screenshot")
    shot = tmp_path / "page.png"
    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--window-size")]
    subprocess.run(
        [str(CHROMIUM), *flags, "--window-size=1280,800", f"--user-data-dir={tmp_path / 'c'}",
         "--virtual-time-budget=2000", f"--screenshot={shot}", page_url],
        capture_output=True, timeout=WAIT_S, check=True,
    )  # fmt: skip
    grey = np.asarray(Image.open(shot).convert("L"))
    # the drawn page: 0.6% of its pixels dark; "Loading..." alone 0.01%
    assert (grey < 128).mean() > 0.002, "the page was not drawn (blank or only 'Loading...')"
