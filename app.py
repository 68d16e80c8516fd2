"""The Gradio web app: a flower photo beside a chart of the model's top-5 species, and under the
chart the photos the model learnt from that look most like it, so a visitor can judge the answer.

This file owns the page, its one API endpoint (`/predict`) and the limits a public host needs,
nothing else: decoding images, running the model, naming classes, rejecting what is none of them
(flower_demo.calibrate) and Grad-CAM (explain.py) all happen in `flower_demo`. The page says one
thing at a time: a confident answer heads the chart of the top five species; a rejected or unsure
photo gets no species heading, only its closest candidates and a verdict giving its own reason; a
file that cannot be read gets one message and a clean page. The About text leads with the model's
own measured accuracy, read from its metadata.json. The reference photos come from the same
forward pass: of the top species (Prediction.neighbours), or of any species for a photo turned
away (Prediction.closest), titled so. The example photos are a gallery of thumbnails named by
species; clicking one classifies it. The "Explain (Grad-CAM)" box is off by default; its overlay
opens in a tab beside the photo and is a private event, computed only while the box is ticked.
The "Teach it a new flower" tab takes a name and a few photos and teaches the model that flower
by weight imprinting (flower_demo.imprint): the visitor's taught classifier is kept in their browser
session's state only (never on disk, never seen by others, at most MAX_TAUGHT flowers), and their
answers, reference photos included, come from it.
Limits: uploads over MAX_FILE_SIZE are refused by Gradio before they reach this code, the upload
cache is emptied on a schedule (CACHE_CLEANUP), and past MAX_QUEUE waiting requests the page and
API answer "busy, try again" at once instead of queueing without end.
Laid out as a Hugging Face Space: `demo` is built at import, and `python app.py` serves it on
127.0.0.1:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise.

FLOWER_DEMO_MODEL may name another saved model folder; by default the shipped `weights/` is served.
The serving core runs its model.tflite with LiteRT on the CPU; where TensorFlow is installed and
sees a GPU (a Space on GPU hardware with requirements-train.txt) it runs model.keras there
(FLOWER_DEMO_ENGINE=litert|keras overrides). The start-up log names the device.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
from pathlib import Path
from typing import Any

from flower_demo.core import DEFAULT_TOP_K, Classifier, Prediction, predict
from flower_demo.errors import FlowerDemoError
from flower_demo.explain import heatmap, overlay
from flower_demo.imprint import MAX_PHOTOS, MIN_PHOTOS
from flower_demo.model_files import collector_paused
from flower_demo.neighbours import DEFAULT_NEIGHBOURS

with collector_paused():  # Gradio's objects live as long as the app: no collection walks them
    import gradio as gr

TOP_K = DEFAULT_TOP_K  # the chart's rows: every one of the top five is shown, however small
# Below this top-1 probability the page says it is not sure instead of naming an answer, whatever
# the rejection rule says. Chosen on the validation set of an uncalibrated interim model (86.8%
# top-1): its answers at or above 0.3 were right 95% of the time, those below only 54%. A
# calibrated model's probabilities say how often it is right (ECE 1.1% on the shipped model's
# test photos), so an answer under 0.3 is right less than about a third of the time.
LOW_CONFIDENCE = 0.3
CONCURRENCY_LIMIT = 2  # predictions at once: LiteRT takes them in turn (a lock), Keras's graph in parallel
EXPLAIN_CONCURRENCY = 1  # Grad-CAMs at once, in their own queue so they never hold up `/predict`
MAX_QUEUE = 32  # requests waiting at once (~2.5 s at the 13 calls/s of BENCHMARKS "Soak"); more: "busy"
MAX_FILE_SIZE = "20mb"  # Gradio's unit: 20 MiB; a phone photo is 2-8 MB
CACHE_CLEANUP = (3600, 3600)  # (every, older than) seconds: uploads are deleted after an hour or two
TRIM_EVERY = 100  # /predict calls between hand-backs of freed memory to the system (release_memory)
ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"  # NNN_species.jpg: Flowers-102 label id NNN (see its README.md)
LABEL_MAP = ROOT / "label_map.json"  # the data set's label id -> species name, for example labels
PHOTO_TAB, GRADCAM_TAB = "photo", "gradcam"
TEST_KEY = "test_measurement"  # metadata.json: this model's figures on the official test split
DATASET_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
PROMPT = "Upload a photo of a flower, take one with the webcam, or pick an example below."
# Why the calibration's rule turned a photo away, by rule (core.OOD_RULES): the feature rules find
# it unlike the training flowers, the probability rules find no species likely enough.
REJECTION_REASONS = {
    "knn": "It looks unlike every flower photo the model learnt from.",
    "mahalanobis": "It looks unlike every flower photo the model learnt from.",
    "max_softmax": "No species is likely enough for the model to trust its answer.",
    "energy": "No species is likely enough for the model to trust its answer.",
}
REJECTED = "The model's check for photos outside its species turned it away."  # any other rule
CHART_ID = "species-chart"
PHOTO_ID = "flower-photo"
# Teaching (the "Teach it a new flower" tab): a visitor's taught flowers live in their browser
# session's state only (a taught Classifier sharing the served one's model and bank), never on disk
# and never seen by other visitors; at most MAX_TAUGHT each, forgotten TAUGHT_TTL seconds after the
# session's last use or when it closes. Each holds at most MAX_PHOTOS photos' thumbnails and feature
# rows (the photo's and its mirror image's): 5 flowers of 20 photos held 5.9 MB (tracemalloc).
MAX_TAUGHT = 5
TAUGHT_TTL = 3600
TEACH_CONCURRENCY = 1  # teachings at once, in their own queue so they never hold up `/predict`
NOTHING_TAUGHT = "No flower taught yet. What you teach stays in this browser tab, for you alone."
EVIDENCE_ID, EXAMPLES_ID = "evidence", "examples"
# The reference photos' titles: of the answer's species, or for a photo turned away, of any species;
# each thumbnail's caption is its species and its similarity to the photo (cosine, 0..1).
EVIDENCE_TITLE = "Photos it learnt from that look most like yours"
EVIDENCE_TITLE_REJECTED = "Closest photos it learnt from, of any species"
# Gradio's Label prints each row's share as a whole percent, so a row under 0.5% would read "0%":
# on the page it reads "<1%" (the API still returns the exact probability).
TINY_ROW = f'#{CHART_ID} .confidence-set:has(meter[aria-valuenow="0"]) .confidence'  # Label's "0%"
# The galleries take the height of their thumbnails (Gradio's gives a gallery 320 px or more); the
# reference photos sit three in a row at any width, the examples as many as fit (three on a phone).
GALLERIES = f"#{EVIDENCE_ID} .grid-wrap, #{EXAMPLES_ID} .grid-wrap"
CSS = f"""{TINY_ROW} {{ visibility: hidden; position: relative; }}
{TINY_ROW}::after {{ content: "<1%"; visibility: visible; position: absolute; right: 0; }}
{GALLERIES} {{ min-height: 0 !important; max-height: none !important; height: auto !important; }}
#{EVIDENCE_ID} .grid-container {{ grid-template-columns: repeat(3, minmax(0, 1fr)) !important; }}
#{EXAMPLES_ID} .grid-container {{
  grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)) !important; }}"""

# Loaded once at start-up; every request shares it.
try:
    CLASSIFIER = Classifier(os.environ.get("FLOWER_DEMO_MODEL") or None)
except FlowerDemoError as exc:  # a missing or mismatched model: one clear line, exit status 1
    raise SystemExit(f"error: cannot serve: {exc}") from None
print(f"flower_demo: serving {CLASSIFIER.engine.path} on {CLASSIFIER.engine.device}", flush=True)
# The C library this process runs on, for release_memory (Windows has no such handle: None).
LIBC = ctypes.CDLL(None) if os.name == "posix" else None
CALLS = itertools.count(1)  # /predict calls so far (next() on it is atomic under the GIL)


class FlowerPhoto(gr.Image):
    """gr.Image that hands the uploaded file over untouched.

    Plain gr.Image opens the upload with Pillow before our function runs, so a broken file fails
    inside Gradio with an unreadable "Error". Passing the path on lets flower_demo.images decode
    it (the same way as in training) and explain a bad file in words.
    """

    is_template = True  # Gradio's flag for "same front end and API type as the parent class"

    def preprocess(self, payload: Any) -> Any:
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        try:
            return super().preprocess(payload)  # None, or an image sent inline as a data: URL
        except Exception:
            raise gr.Error("This file is not an image the app can read.") from None


class SpeciesChart(gr.Label):
    """gr.Label whose heading may be other than its top row ("Not one of the 102 species").

    Plain gr.Label always heads the chart with its top row, which contradicted the verdict on a
    rejected photo. This one also takes what it sends: {"label": heading, "confidences": rows}.
    """

    is_template = True  # same front end and API type as gr.Label

    def postprocess(self, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("confidences"), list):
            return gr.components.label.LabelData(**value)
        return super().postprocess(value)


def verdict(prediction: Prediction, classifier: Classifier | None = None) -> str:
    """The answer in words, with the reason the page gives it: a photo the calibration's rule turns
    away is said to be none of the species, with that rule's reason (never its probability's); a
    top-1 under LOW_CONFIDENCE is called a guess and says so; any other is stated as the answer.
    `classifier`: the one that answered (a session's taught one), by default the served one."""
    name, probability = prediction.top1
    known = len((classifier or CLASSIFIER).class_names)
    if not prediction.is_known:
        rule = CLASSIFIER.calibration.ood_rule if CLASSIFIER.calibration else ""
        reason = REJECTION_REASONS.get(rule, REJECTED)
        return (
            f"**This does not look like one of the {known} species I know.** {reason} The chart shows "
            f"the closest species (*{name}* first); its percentages only compare the {known} species "
            "with each other, so they cannot say that the photo shows none of them. It may show "
            "something other than a flower, another plant, or several flowers."
        )
    if probability < LOW_CONFIDENCE:
        return (
            f"**Not sure.** The best match is *{name}*, at only {probability:.0%}: under the "
            f"{LOW_CONFIDENCE:.0%} the app needs before it names an answer. The photo may show a flower "
            f"outside the {known} species, several flowers, or a hard view; the chart shows the other "
            "candidates."
        )
    return f"Most likely **{name}** ({probability:.0%})."


def heading(prediction: Prediction, classifier: Classifier | None = None) -> str:
    """What heads the chart: the species only when the verdict states it as the answer."""
    if not prediction.is_known:
        return f"Not one of the {len((classifier or CLASSIFIER).class_names)} species"
    if prediction.top1[1] < LOW_CONFIDENCE:
        return "Not sure"
    return prediction.top1[0]


def chart(prediction: Prediction, classifier: Classifier | None = None) -> dict[str, Any]:
    """The chart, as `/predict` returns it: {"label": heading, "confidences": [{label, confidence}]},
    every one of the prediction's top classes, best first (the page shows a row under 0.5% as "<1%").
    """
    rows = zip(prediction.class_names, prediction.probabilities)
    return {
        "label": heading(prediction, classifier),
        "confidences": [{"label": n, "confidence": float(p)} for n, p in rows],
    }


def evidence(prediction: Prediction | None) -> gr.Gallery:
    """The gallery under the chart: the prediction's reference photos, each captioned with its
    species and similarity, titled by what they are; hidden when there are none."""
    found = prediction.evidence if prediction is not None else []
    items = [(n["image"], f"{n['class_name']}, {n['similarity']:.2f}") for n in found]
    title = EVIDENCE_TITLE if prediction is None or prediction.is_known else EVIDENCE_TITLE_REJECTED
    return gr.Gallery(value=items or None, label=title, visible=bool(items))


def release_memory() -> None:
    """Every TRIM_EVERY calls, glibc's malloc_trim(0): Gradio runs each request on a worker thread,
    and glibc keeps what those threads free in its arenas, resident but unused; a 10,000-call soak
    saw the server's memory rise and fall by tens of MB with no Python objects behind it (BENCHMARKS
    "Soak"). Elsewhere than glibc (macOS, musl) there is no such call and nothing is done."""
    if next(CALLS) % TRIM_EVERY == 0 and hasattr(LIBC, "malloc_trim"):
        LIBC.malloc_trim(0)


def classify(
    image: str | None, taught: Classifier | None = None
) -> tuple[dict[str, Any] | None, str, gr.Gallery]:
    """The `/predict` endpoint: the chart ({species: probability}, best first), the verdict and
    the reference photos (the gallery: each thumbnail with its caption). `taught`: the session's
    classifier when its visitor taught it flowers (a State, not part of the API)."""
    release_memory()
    if image is None:
        return blank()[1:]
    classifier = taught or CLASSIFIER
    try:
        prediction = predict(image, classifier, top_k=TOP_K, neighbours=DEFAULT_NEIGHBOURS)
    except FlowerDemoError as exc:
        raise user_error(exc, [image]) from None
    return chart(prediction, classifier), verdict(prediction, classifier), evidence(prediction)


def user_error(exc: FlowerDemoError, uploads: list[str]) -> gr.Error:
    """A user's mistake, not a crash: no traceback, and the uploads' own names, not cache paths."""
    message = str(exc)
    for path in uploads:
        message = message.replace(path, Path(path).name)
    return gr.Error(message, print_exception=False)


def teach(name: str, photos: list[str] | None, taught: Classifier | None) -> tuple[Classifier, str]:
    """The "Teach it" button: the session's classifier taught one more flower (imprint.py), and the
    list of what this session has taught. Refusals are one readable message; the session keeps
    what it had."""
    current = taught or CLASSIFIER
    if current.num_classes - CLASSIFIER.num_classes >= MAX_TAUGHT:
        raise gr.Error(f"At most {MAX_TAUGHT} taught flowers per visit; reload the page to start again.")
    photos = list(photos or [])
    try:
        learnt = current.teach(name or "", photos)
    except FlowerDemoError as exc:
        raise user_error(exc, photos) from None
    return learnt, taught_list(learnt)


def taught_list(taught: Classifier | None) -> str:
    """What this session's visitor has taught, in words."""
    names = [] if taught is None else taught.class_names[CLASSIFIER.num_classes :]
    if not names:
        return NOTHING_TAUGHT
    listed = ", ".join(f"**{n}**" for n in names)
    return (
        f"Taught in this tab: {listed}. Answers on the 'Name a flower' tab now include them, with "
        f"the photos you gave as their evidence ({len(names)} of at most {MAX_TAUGHT})."
    )


def forget() -> tuple[None, str]:
    """The "Forget them" button: back to the served model's species."""
    return None, NOTHING_TAUGHT


def blank() -> tuple[None, None, str, gr.Gallery]:
    """The page as it starts (no photo, empty chart, the prompt, no reference photos): where a
    failed upload leaves it, so its one message is the error's, with no broken image or stale
    chart beside it."""
    return None, None, PROMPT, evidence(None)


def pick_example(
    selected: gr.SelectData, taught: Classifier | None = None
) -> tuple[str, dict[str, Any] | None, str, gr.Gallery]:
    """A click on an example's thumbnail: that photo in the photo box, and its answer."""
    photo = examples()[0][selected.index]
    return photo, *classify(photo, taught)


def explain(
    image: str | None, wanted: bool, taught: Classifier | None = None
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The Grad-CAM overlay of the top-1 species in its own tab beside the photo while the box is
    ticked (heatmap, Grad-CAM tab, tabs); nothing is computed, and the tab is hidden, otherwise.

    A file that cannot be read is `/predict`'s to report, so here it only hides the tab.
    """
    hidden = (None, gr.update(visible=False), gr.update(selected=PHOTO_TAB))
    if not wanted or image is None:
        return hidden
    try:
        heat = overlay(image, heatmap(image, taught or CLASSIFIER))
    except FlowerDemoError:  # unreadable, or a taught flower on top (it has no class activation map)
        return hidden
    return heat, gr.update(visible=True), gr.update(selected=GRADCAM_TAB)


def examples() -> tuple[list[str], list[str]]:
    """The example photos in examples/ and their species names (the data set's, via the label id
    in each file name), shown on the page under each thumbnail."""
    names = json.loads(LABEL_MAP.read_text())
    photos = sorted(EXAMPLES_DIR.glob("[0-9][0-9][0-9]_*.jpg"))
    return [str(p) for p in photos], [names[str(int(p.name[:3]))] for p in photos]


def accuracy_text(metadata: dict[str, Any]) -> str:
    """How often its top answer is right on photos it never trained on, and how that was measured:
    this model's own test figure (TEST_KEY) when it was measured, else its recipe's estimate
    (calibrate --folds), else its validation figure. Only one of them: they are different models'."""
    measured = metadata.get(TEST_KEY, {})
    if "top1" in measured and "top5" in measured:
        return (
            f"On {measured['images']:,} photos of the data set's official {measured['split']} split, which "
            "it never trained on and no choice was made on, its first answer was right for "
            f"**{measured['top1']:.2%}** and the right species was among its top five for "
            f"**{measured['top5']:.2%}** (measured independently, on this very model)."
        )
    estimate = metadata.get("estimate", {})
    if "top1" in estimate and estimate.get("folds"):
        folds = "; ".join(
            f"trained on {fold['trained_on']}, scored {fold['top1']:.1%} on the {fold['images']:,} "
            f"{fold['scored_on']} photos"
            + (" the recipe was picked on" if fold.get("recipe_chosen_on_scored") else "")
            for fold in estimate["folds"]
        )
        clean = estimate.get("unchosen")  # the folds no choice saw, when the recipe was picked on one
        headline = clean or estimate
        text = (
            f"Expect its top-1 answer to be right for about **{headline['top1']:.1%}** of photos like "
            f"these, and the right species in its top 5 for {headline['top5']:.1%}: "
        )
        if clean:
            text += (
                "its training recipe's score on held-out photos no choice was made on (the recipe was "
                f"picked on another fold's score). The folds: {folds}. Their {estimate['method']} mean, "
                f"{estimate['top1']:.1%}, leans optimistic."
            )
        else:
            text += (
                f"the {estimate['method']} estimate of its training recipe on photos the recipe's models "
                f"never trained on ({folds})."
            )
        if estimate.get("chosen_on_scored") and not clean:
            text += " A fold's best epoch was chosen on its scored photos, so expect a little less."
        trained_on = metadata.get("data", {}).get("train_size")
        if not metadata.get("data", {}).get("validation_size") and trained_on:
            text += f" This model itself was then trained on all {trained_on:,} of those photos."
        return text
    metrics = metadata.get("metrics", {})
    if "validation_top1" not in metrics:
        return "No accuracy on held-out photos was recorded for this model."
    images = metadata.get("data", {}).get("validation_size")
    on = f" on {images:,} validation photos it never trained on" if images else " on validation photos"
    text = f"Its top-1 answer was right for **{metrics['validation_top1']:.1%}**{on}"
    if "validation_top5" in metrics:
        text += f", and the right species was in its top 5 for {metrics['validation_top5']:.1%}"
    text += "."
    if metrics.get("chosen_on_validation", True):  # early stopping picked the epoch on those photos
        text += " Training stopped at its best epoch on those photos, so expect a little less on new ones."
    return text


def rejection_text(metadata: dict[str, Any]) -> str:
    """What the "not one of the species" check does, with this model's own figures only: on the
    test photos when measured there, else on the calibration's held-out non-flower photos."""
    calibration = metadata.get("calibration", {})
    if not calibration:
        return (
            "it always answers with one of these species, so a flower it has never seen gets the "
            "name of a look-alike (the verdict says so when it is unsure)."
        )
    how = "the verdict says so instead of naming one"
    if calibration.get("ood_rule") in ("knn", "mahalanobis"):
        how = "when a photo looks unlike every flower photo it learnt from, " + how
    else:
        how = "when no species is likely enough, " + how
    measured, report = metadata.get(TEST_KEY, {}), calibration.get("report", {})
    if "flowers_rejected" in measured and "non_flowers_rejected" in measured:
        figures = (
            f": it turned away {measured['flowers_rejected']:.1%} of the test flowers, and "
            f"{measured['non_flowers_rejected']:.1%} of {measured['non_flowers']} withheld "
            f"{measured.get('non_flowers_kind', 'non-flower photos')}"
        )
    elif "non_flowers" in report:
        figures = (
            f": it turned away {report['non_flowers_rejected']} of {report['non_flowers']} held-out "
            "photos of animals, people, streets, buildings and objects"
        )
    else:
        figures = ""
    return f"{how}{figures}. A flower it has never seen can still get the name of a look-alike."


def about(metadata: dict[str, Any], class_names: list[str]) -> str:
    """How often it is right on photos it never saw (first), what it knows, and what it cannot do."""
    return f"""## About
**How often it is right:** {accuracy_text(metadata)}

**What it knows:** the {len(class_names)} flower species of the
[Oxford Flowers-102]({DATASET_URL}) data set (list below), learnt by fine-tuning
{metadata["backbone"]} at {metadata["image_size"]} px.

**Limits:** it only knows these species; {rejection_text(metadata)} Photos of a single flower,
filling the frame, work best. It is a demo, **not a plant-safety tool**: never use it to decide
whether a plant is edible, poisonous or safe for pets.
"""


def classify_tab(taught: gr.State) -> None:
    """The photo beside the chart, the verdict and the reference photos under it, the examples."""
    with gr.Row(equal_height=True):
        # The overlay gets a tab over the photo's place, so ticking Explain moves nothing below.
        with gr.Tabs(selected=PHOTO_TAB) as tabs:
            with gr.Tab("Photo", id=PHOTO_TAB):
                image = FlowerPhoto(
                    type="filepath",
                    sources=["upload", "webcam", "clipboard"],
                    label="Flower photo",
                    height=360,
                    elem_id=PHOTO_ID,
                )
            with gr.Tab("Grad-CAM", id=GRADCAM_TAB, visible=False) as gradcam_tab:
                heatmap = gr.Image(
                    label="Grad-CAM of the top species",
                    type="pil",
                    interactive=False,
                    height=360,
                    elem_id="gradcam",
                )
        with gr.Column():
            chart_box = SpeciesChart(
                num_top_classes=TOP_K, label="Answer, and the closest species", elem_id=CHART_ID
            )
            answer = gr.Markdown(PROMPT, label="Verdict")
            photos_like = gr.Gallery(
                label=EVIDENCE_TITLE,
                visible=False,
                columns=DEFAULT_NEIGHBOURS,
                object_fit="cover",
                interactive=False,
                elem_id=EVIDENCE_ID,
            )
            explain_box = gr.Checkbox(
                value=False,
                label="Explain (Grad-CAM)",
                info="Colour the parts of the photo the top answer rests on (red: most).",
                visible=CLASSIFIER.explains,  # a TF-Hub backbone returns no class activation maps
            )
    # `input` fires once per upload, webcam shot, paste or clear; `change` fires twice when
    # a photo replaces another (Gradio 6), and would classify it, or report its error, twice.
    # The session's taught classifier is a State: not part of `/predict`'s API.
    image.input(
        classify,
        inputs=[image, taught],
        outputs=[chart_box, answer, photos_like],
        api_name="predict",
        show_progress="minimal",
    ).failure(  # the error's toast is the one message: no broken image or old chart beside it
        blank,
        outputs=[image, chart_box, answer, photos_like],
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )
    # `change` (unlike `input`) also fires when an example is loaded; the box starts it too.
    gr.on(
        triggers=[image.change, explain_box.change],
        fn=explain,
        inputs=[image, explain_box, taught],
        outputs=[heatmap, gradcam_tab, tabs],
        api_visibility="private",  # `/predict` stays the one endpoint
        concurrency_id="explain",
        concurrency_limit=EXPLAIN_CONCURRENCY,
        show_progress="minimal",
    )
    photos, species = examples()
    gallery = gr.Gallery(
        value=list(zip(photos, species)),
        label="Example photos, from the photos it learnt from (click one)",
        object_fit="cover",
        allow_preview=False,  # a click classifies the photo instead of enlarging it
        interactive=False,
        elem_id=EXAMPLES_ID,
    )
    # Setting the photo from here fires no `input` event, so this classifies it too; the
    # photo's `change` event starts the Grad-CAM as for an upload.
    gallery.select(
        pick_example,
        inputs=[taught],
        outputs=[image, chart_box, answer, photos_like],
        api_visibility="private",  # `/predict` stays the one endpoint
        show_progress="minimal",
    )


def teach_tab(taught: gr.State) -> None:
    """A name and a few photos of a flower the model does not know; taught in a second, for this
    session only (imprint.py: no training)."""
    gr.Markdown(
        f"Give it the name of a flower it does not know and {MIN_PHOTOS} to {MAX_PHOTOS} photos of it. "
        "It learns it in about a second, without training: the flower's classifier weights come from "
        "the photos' features (weight imprinting). From then on, in this browser tab only, answers on "
        "the 'Name a flower' tab include it. Nothing is saved, and no other visitor sees it."
    )
    with gr.Row():
        name = gr.Textbox(label="Name of the flower", max_length=60, elem_id="teach-name")
        photos = gr.File(
            file_count="multiple",
            file_types=["image"],
            type="filepath",
            label=f"{MIN_PHOTOS} to {MAX_PHOTOS} photos of it",
            elem_id="teach-photos",
        )
    with gr.Row():
        button = gr.Button("Teach it", variant="primary", elem_id="teach-button")
        reset = gr.Button("Forget them", elem_id="teach-forget")
    listed = gr.Markdown(NOTHING_TAUGHT, elem_id="taught-list")
    button.click(
        teach,
        inputs=[name, photos, taught],
        outputs=[taught, listed],
        api_visibility="private",  # `/predict` stays the one endpoint
        concurrency_id="teach",
        concurrency_limit=TEACH_CONCURRENCY,
        show_progress="minimal",
    )
    reset.click(forget, outputs=[taught, listed], api_visibility="private", queue=False)


def build_demo(max_queue: int = MAX_QUEUE, cache_cleanup: tuple[int, int] = CACHE_CLEANUP) -> gr.Blocks:
    """The page; `classify` is its only API event, so `/predict` is the only endpoint."""
    with gr.Blocks(title="Flower classifier", analytics_enabled=False, delete_cache=cache_cleanup) as demo:
        gr.Markdown("# Which flower is this?\nIts answer among 102 species, and the closest candidates.")
        # This visitor's taught classifier (None: none taught): per browser session, in memory only.
        taught = gr.State(None, time_to_live=TAUGHT_TTL)
        with gr.Tabs():
            with gr.Tab("Name a flower", id="classify"):
                classify_tab(taught)
            with gr.Tab("Teach it a new flower", id="teach"):
                teach_tab(taught)
        gr.Markdown(about(CLASSIFIER.metadata, CLASSIFIER.class_names))
        with gr.Accordion(f"The {len(CLASSIFIER.class_names)} species", open=False):
            gr.Markdown(", ".join(sorted(CLASSIFIER.class_names)))
    return demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=max_queue)


def launch(blocks: gr.Blocks | None = None, **options: Any) -> tuple[Any, str, str]:
    """Serve `blocks` (default: `demo`) with the upload size limit and the page's CSS, which Gradio
    takes at launch, not at build; `options` go to `Blocks.launch` (port, quiet, ...)."""
    references = CLASSIFIER.references  # Gradio must be allowed to serve their thumbnails, wherever they are
    allowed = [str(references.folder)] if references is not None else []
    return (blocks or demo).launch(max_file_size=MAX_FILE_SIZE, css=CSS, allowed_paths=allowed, **options)


demo = build_demo()

if __name__ == "__main__":
    launch()
