"""The web demo (``vmad-pipeline demo``): a Gradio page over one trained detector, for a quality
engineer who wants to see what the model says of an image without writing code.

One image is inspected as everywhere else (:class:`~vmad_pipeline.inference.chat.Conversation`
over :meth:`Detector.inspect`, so the page, ``kedro run --pipeline predict`` and the served model
agree), then follow-up questions are answered in the same conversation. Uploads are decoded by
:func:`~vmad_pipeline.images.read_rgb` from the file the browser sent, never by Gradio's own
conversion (which would clip a 16-bit image). Gradio is imported only when a page is built: it is
slow to import and people who never run the demo should not pay for it. Nothing here reaches the
internet: analytics are off and the theme uses the system's fonts, not Google's.
"""

from __future__ import annotations

import html
import os
from functools import partial
from pathlib import Path

import numpy as np

from vmad_pipeline.configs.predict import DEFAULT_MAX_PIXELS
from vmad_pipeline.images import check_pixels, read_rgb
from vmad_pipeline.inference.batch import folder_category
from vmad_pipeline.inference.chat import Conversation
from vmad_pipeline.inference.references import INLINE_REFERENCES as MAX_REFERENCES
from vmad_pipeline.inference.service import Inspection

DEFAULT_OBJECT = "object"  # the object name when none is typed (the prompt needs one)
EXAMPLES_GLOB = "data/01_raw/synthetic/*/test/*/*.png"
SPLITS = "data/05_model_input/splits.json"  # the catalog's `splits`: unseen classes first
IMAGE_HEIGHT = 300  # px: the upload and the overlay side by side, the chat still in view
NO_ANSWER = "(no answer)"  # an empty answer still shows as a chat bubble
EXAMPLES = "Example images"  # the examples' heading (examples_label names the unseen ones)
# What one page may hold (docs/demo.md, "Bounds"). A file over MAX_UPLOAD is refused as it
# arrives: an RGB image at the pixel limit, stored uncompressed, fits (3 x 40,000,000 bytes).
MAX_UPLOAD = "128mb"
SESSIONS = 16  # conversations kept in memory; a newer one drops the oldest
SESSION_TTL_S = 3600  # and a conversation untouched for an hour is dropped
QUEUE = 32  # inspections and questions waiting for the model; more are refused at once
CACHE_S = (600, 3600)  # every 10 min, the page's uploads and outputs older than an hour deleted


def _gradio():
    """Gradio with its analytics off (set before the import: the machines have no internet)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    return gr


def example_images(project: str | Path = ".", limit: int = 4) -> list[str]:
    """Up to ``limit`` images of the project's synthetic test set: the classes the model never
    saw first (the split's test classes, when the project has a split: the product is
    zero-shot), then within them the first defect image of each class in turn, then their good
    ones, then the rest (several objects and defects show more than four views of one class)."""
    files = sorted(Path(project).glob(EXAMPLES_GLOB))
    firsts = {f.parent: f for f in reversed(files)}  # the first file of each folder
    unseen = _unseen_classes(Path(project))

    def order(f: Path) -> tuple:
        folder = f.parent
        siblings = sorted(p for p in firsts if p.parent == folder.parent and p.name != "good")
        rank = siblings.index(folder) if folder in siblings else len(firsts)
        name = f.parents[2].name
        return (bool(unseen) and name not in unseen, rank, name)  # unseen, k-th defect, class

    ordered = sorted(firsts.values(), key=order)
    ordered += [f for f in files if f not in firsts.values()]
    return [str(f) for f in ordered[:limit]]


def examples_label(project: str | Path, examples: list[str]) -> str:
    """The examples' heading, naming the classes among them the model never saw in training."""
    unseen = _unseen_classes(Path(project))
    shown = [c for c in dict.fromkeys(Path(e).parents[2].name for e in examples) if c in unseen]
    if not shown:
        return EXAMPLES
    return f"{EXAMPLES} (first: {', '.join(shown)}, classes the model never saw in training)"


def _unseen_classes(project: Path) -> set[str]:
    """The split's test classes (data/05_model_input/splits.json), or none without a split."""
    import json

    path = project / SPLITS
    try:
        return set(json.loads(path.read_text()).get("test_classes", []))
    except (OSError, ValueError, AttributeError):
        return set()


def decision_text(inspection: Inspection, detector, references=None) -> str:
    """The decision, the score and the threshold it was compared with (and where that came
    from, when the model was loaded from a project: calibrated or a parameter; or the normal
    references it was compared with, which chose it)."""
    verdict, sign = ("Anomalous", "≥") if inspection.anomalous else ("Normal", "<")
    source, cut = detector.thresholds.get("image_from"), detector.image_threshold
    if references is not None and references.threshold is not None:
        source, cut = f"from {references.label}", references.threshold
    origin = f" (`{source}`)" if source else ""  # code: "fpr@0.05" is no e-mail address
    against = "" if references is None else f"\n\nCompared with {references.label}."
    if inspection.unlike_references:
        against += " **The image looks unlike them: are they of this product?**"
    if inspection.repeats_itself:  # zero-shot: docs/references.md, "The zero-shot decision"
        against += "\n\nNothing in the image is unlike the rest of it: its score was scaled down."
    return (
        f"## {verdict}\n\nScore **{inspection.score:.3f}** {sign} image threshold "
        f"{cut:.3f}{origin}{against}"
    )


def significance_text(inspection: Inspection, detector) -> str:
    """How much the mask says: its share of the image, the map's peak, the location named."""
    drawn = "the answer's [SEG]" if inspection.seg_found else "the fallback map (no [SEG] said)"
    return "\n".join(
        [
            f"- Mask: **{100 * inspection.mask_fraction:.2f} %** of the image's pixels "
            f"(pixel threshold {detector.pixel_threshold:.2f})",
            f"- Map maximum: **{int(inspection.map.max(initial=0)) / 255:.2f}**",
            f"- Location named in the answer: **{inspection.location or 'none'}**",
            f"- Mask drawn from {drawn}",
        ]
    )


def messages(conversation: Conversation) -> list[dict[str, str]]:
    """The conversation as the chat shows it (Gradio's role/content messages)."""
    out = []
    for turn in conversation.turns:
        out.append({"role": "user", "content": turn.question})
        out.append({"role": "assistant", "content": turn.answer.strip() or NO_ANSWER})
    return out


def _shown(message: str) -> str:
    """A message as Gradio's toasts show it: they render HTML, which would swallow ``<image>``."""
    return html.escape(message, quote=False)


def read_upload(path: str | None) -> np.ndarray:
    """The uploaded file as every other reader decodes it; a readable gr.Error otherwise (the
    user's mistake: no stack trace in the page or the terminal)."""
    gr = _gradio()
    if not path:
        raise gr.Error("Upload an image first (or pick an example).", print_exception=False)
    try:
        # the server's and predict's pixel limit, from the header before anything is decoded
        check_pixels(path, DEFAULT_MAX_PIXELS, limit="this demo's limit")
        return read_rgb(path)
    except ValueError as err:  # named by the file's name: its cache path means nothing to users
        name = Path(path).name
        reason = str(err).replace(str(path), name)
        reason = reason if name in reason else f"{name}: {reason}"
        message = _shown(f"Not an image this demo can read: {reason}")
        raise gr.Error(message, print_exception=False) from err


def on_references(detector, paths: list[str] | None, category: str):
    """The uploaded normal references of the product (None when there are none): read as the
    image is, capped at :data:`MAX_REFERENCES`, thresholded from themselves alone."""
    from vmad_pipeline.configs.evaluate import ReferencesConfig
    from vmad_pipeline.inference.references import shots_from_images

    gr = _gradio()
    if not paths:
        return None
    if len(paths) > MAX_REFERENCES:
        raise gr.Error(
            f"{len(paths)} reference images: this demo takes at most {MAX_REFERENCES}.",
            print_exception=False,
        )
    images = [read_upload(p) for p in paths]
    label = f"{len(images)} uploaded normal image(s)"
    try:
        return shots_from_images(
            detector, images, category, rule=ReferencesConfig().model_threshold, label=label
        )
    except ValueError as err:  # a model that reads no references
        raise gr.Error(_shown(f"Cannot use references: {err}"), print_exception=False) from err


def on_inspect(detector, path: str | None, category: str | None, references=None):
    """Inspect the upload (against the uploaded normal references, when there are); the
    conversation starts with the detection question."""
    image = read_upload(path)
    name = (category or "").strip() or DEFAULT_OBJECT
    refs = on_references(detector, references, name)
    try:
        conversation = Conversation(detector, image, name, references=refs)
    except ValueError as err:  # the object's name: too long, or places <image> / [SEG]
        raise _gradio().Error(_shown(f"Cannot inspect: {err}"), print_exception=False) from err
    first = conversation.inspection
    return (
        conversation,
        decision_text(first, detector, refs),
        significance_text(first, detector),
        _served(first.overlay),
        messages(conversation),
    )


def _served(overlay: np.ndarray):
    """The overlay as the page serves it: a PNG tagged with this call's own id. Gradio (6.31)
    names an output image's file by its bytes' hash and rewrites that file in place, so two
    identical overlays at once (two users, one image) had a download read the file while the
    other call's rewrite had emptied it; a tag per call gives each its own file."""
    from uuid import uuid4

    from PIL import Image

    image = Image.fromarray(overlay)
    image.info["vmad-inspection"] = uuid4().hex  # kept by Gradio's PNG writer as a text chunk
    return image


def on_ask(conversation: Conversation | None, question: str | None):
    """Answer a follow-up; a turn that says [SEG] replaces the overlay with its own mask. A
    question refused is a warning, not an error: an error would blank the conversation shown."""
    gr = _gradio()
    if conversation is None:
        gr.Warning("Inspect an image first, then ask about it.")
        return gr.skip(), gr.skip(), gr.skip()
    try:
        turn = conversation.ask(question or "")
    except ValueError as err:  # empty, or places <image> / [SEG], or too long
        gr.Warning(_shown(f"Cannot ask that: {err}"))
        return gr.skip(), gr.skip(), gr.skip()
    overlay = _served(turn.overlay) if turn.overlay is not None else gr.skip()
    return messages(conversation), overlay, ""


def _theme(gr):
    """Gradio's default look with the system's fonts (the default fetches Google Fonts)."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )


def _upload(gr, **kwargs):
    """An image upload whose callback gets the file as sent, undecoded: gr.Image would open it
    with PIL first (a file that is no image fails there with a message no user should read);
    :func:`read_upload` decodes it as everything else. Patched on the instance: a subclass of a
    Gradio component writes a ``.pyi`` stub next to this module whenever it is defined."""
    image = gr.Image(type="filepath", image_mode=None, **kwargs)  # image_mode=None: no convert
    decode = image.preprocess

    def preprocess(payload):
        if payload is not None and payload.path:
            return payload.path
        return decode(payload)  # nothing, or pasted data: written to a file

    image.preprocess = preprocess
    return image


def _inputs(gr, examples: list[str], label: str):
    """The upload, the object name, the button and the example images."""
    image = _upload(
        gr, sources=["upload", "clipboard"], label="Image", elem_id="image", height=IMAGE_HEIGHT
    )
    category = gr.Textbox(
        label="Object name (optional)", placeholder="e.g. screw, pcb", elem_id="category"
    )
    references = gr.File(
        label=f"Normal images of this product (optional, up to {MAX_REFERENCES})",
        file_count="multiple",
        type="filepath",
        elem_id="references",
    )
    button = gr.Button("Inspect", variant="primary", elem_id="inspect")
    if examples:
        gr.Examples(
            [[path, folder_category(Path(path))] for path in examples],
            inputs=[image, category],
            label=label,
        )
    return image, category, references, button


def _outputs(gr):
    """Decision, significance and the overlay."""
    decision = gr.Markdown("Upload an image and press **Inspect**.", elem_id="decision")
    significance = gr.Markdown(elem_id="significance")
    overlay = gr.Image(
        label="Mask (red) over the image",
        format="png",  # lossless: the mask's edge stays where the model drew it
        interactive=False,
        buttons=["download", "fullscreen"],  # no "share": it posts to Hugging Face
        elem_id="overlay",
        height=IMAGE_HEIGHT,
    )
    return decision, significance, overlay


def build_app(
    detector,
    examples: list[str] | None = None,
    queue: int = QUEUE,
    examples_label: str = EXAMPLES,
):
    """The demo page (a ``gradio.Blocks``) over ``detector``; ``examples``: image paths offered
    as examples, their object name taken from their folders; ``queue``: the model calls that
    may wait (more are refused at once, "Queue is full")."""
    gr = _gradio()
    with gr.Blocks(
        title="VMAD anomaly inspection", analytics_enabled=False, delete_cache=CACHE_S
    ) as app:
        gr.Markdown(
            "# VMAD anomaly inspection\nUpload an image of a part, name the object, press "
            "**Inspect**; then ask the model about the image."
        )
        state = gr.State(time_to_live=SESSION_TTL_S)
        with gr.Row():
            with gr.Column():
                image, category, references, button = _inputs(gr, examples or [], examples_label)
            with gr.Column():
                decision, significance, overlay = _outputs(gr)
        chat = gr.Chatbot(
            label="Conversation", elem_id="chat", height=320, buttons=["copy", "copy_all"]
        )
        with gr.Row():
            question = gr.Textbox(
                label="Follow-up question",
                placeholder="e.g. Where is the defect? How severe is it?",
                elem_id="question",
                scale=4,
            )
            ask = gr.Button("Ask", elem_id="ask", scale=1)
        button.click(
            partial(on_inspect, detector),
            [image, category, references],
            [state, decision, significance, overlay, chat],
            api_name="inspect",  # what a script driving the page calls (gradio_client)
            concurrency_id="model",  # one model call at a time, inspections and questions alike
        )
        for event, name in ((ask.click, "ask"), (question.submit, "ask_on_enter")):
            event(
                on_ask,
                [state, question],
                [chat, overlay, question],
                api_name=name,
                api_visibility="public" if name == "ask" else "private",
                concurrency_id="model",
            )
        # a cleared chat ends the conversation too
        chat.clear(lambda: None, None, state, api_visibility="private")
    return app.queue(max_size=queue)


def launch(
    detector,
    host: str = "127.0.0.1",
    port: int = 7860,
    examples: list[str] | None = None,
    *,
    block: bool = True,
    max_upload: str = MAX_UPLOAD,
    sessions: int = SESSIONS,
    queue: int = QUEUE,
    examples_label: str = EXAMPLES,
):
    """Serve the demo on ``host``:``port``; ``block=False`` returns at once with the page
    served from a thread (the tests; close it with ``app.close()``). ``max_upload`` (e.g.
    "128mb"), ``sessions`` and ``queue`` bound what the page holds. Returns the Blocks."""
    gr = _gradio()
    app = build_app(detector, examples, queue, examples_label)
    app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        show_error=True,  # an error's message (never its stack trace) in the page
        theme=_theme(gr),
        max_file_size=max_upload,
        state_session_capacity=sessions,
    )
    return app
