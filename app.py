"""The Gradio web app: a flower photo beside a chart of the model's top-5 species.

This file owns the page and its one API endpoint (`/predict`), nothing else: decoding images,
running the model, naming classes, rejecting what is none of them (calibrate.py) and Grad-CAM
(explain.py) all happen in `flower_demo`. The "Explain (Grad-CAM)" box is off by default; the
overlay it shows is a private event, computed only while the box is ticked.
Laid out as a Hugging Face Space: `demo` is built at import, and `python app.py` serves it on
127.0.0.1:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise.

FLOWER_DEMO_MODEL may name another saved model folder; by default the shipped `weights/` is served.
The serving core runs its model.tflite with LiteRT on the CPU; where TensorFlow is installed and
sees a GPU (a Space on GPU hardware with requirements-train.txt) it runs model.keras there
(FLOWER_DEMO_ENGINE=litert|keras overrides). The start-up log names the device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr

from flower_demo.core import Classifier, Prediction, predict
from flower_demo.errors import FlowerDemoError
from flower_demo.explain import heatmap, overlay

TOP_K = 5
# For a model without a stored calibration: below this top-1 probability the page says the model
# is not sure. Chosen on the validation set of an uncalibrated interim model (86.8% top-1): its
# answers at or above 0.3 were right 95% of the time, those below only 54%. A calibrated model
# (metadata "calibration", see flower_demo/calibrate.py) rejects below its own threshold instead.
LOW_CONFIDENCE = 0.3
CONCURRENCY_LIMIT = 2  # predictions run at once; the classifier's tf.function is thread-safe
EXPLAIN_CONCURRENCY = 1  # Grad-CAMs at once, in their own queue so they never hold up `/predict`
EXAMPLES_DIR = Path(__file__).resolve().parent / "tests" / "fixtures" / "flowers"
DATASET_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
PROMPT = "Upload a photo of a flower, take one with the webcam, or pick an example below."

# Loaded once at start-up; every request shares it.
try:
    CLASSIFIER = Classifier(os.environ.get("FLOWER_DEMO_MODEL") or None)
except FlowerDemoError as exc:  # a missing or mismatched model: one clear line, exit status 1
    raise SystemExit(f"error: cannot serve: {exc}") from None
print(f"flower_demo: serving {CLASSIFIER.engine.path} on {CLASSIFIER.engine.device}", flush=True)


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


def verdict(prediction: Prediction) -> str:
    """The top-1 answer in words; a weak one is called a guess, never stated as fact, and a photo
    the calibration rejects is said to be none of the species."""
    name, probability = prediction.top1
    if not prediction.is_known:
        return (
            f"**This does not look like one of the {len(CLASSIFIER.class_names)} species I know.** "
            f"The closest is *{name}*, at {probability:.0%}, too low to trust: the photo may show "
            "something other than a flower, another plant, several flowers, or a hard view."
        )
    if probability < LOW_CONFIDENCE:
        return (
            f"**Not sure.** The closest match is *{name}*, but only at {probability:.0%}, which is "
            "too low to trust. The photo may show a flower outside the 102 species the model knows, "
            "several flowers, or a hard view. The chart shows the other candidates."
        )
    return f"Most likely **{name}** ({probability:.0%})."


def classify(image: str | None) -> tuple[dict[str, float] | None, str]:
    """The `/predict` endpoint: top-5 {species: probability} and the verdict in words."""
    if image is None:
        return None, PROMPT
    try:
        prediction = predict(image, CLASSIFIER, top_k=TOP_K)
    except FlowerDemoError as exc:
        # A user's mistake, not a crash: no traceback, and the upload's own name, not the cache path.
        message = str(exc).replace(image, Path(image).name)
        raise gr.Error(message, print_exception=False) from None
    confidences = {n: float(p) for n, p in zip(prediction.class_names, prediction.probabilities)}
    return confidences, verdict(prediction)


def explain(image: str | None, wanted: bool) -> dict[str, Any]:
    """The Grad-CAM overlay of the top-1 species while the box is ticked; hidden otherwise.

    Nothing is computed while the box is off. A file that cannot be read is `/predict`'s to
    report, so here it only hides the overlay.
    """
    if not wanted or image is None:
        return gr.update(value=None, visible=False)
    try:
        return gr.update(value=overlay(image, heatmap(image, CLASSIFIER)), visible=True)
    except FlowerDemoError:
        return gr.update(value=None, visible=False)


def about(metadata: dict[str, Any], class_names: list[str]) -> str:
    """What the model knows, how well it did on held-out photos, and what it cannot do."""
    metrics = metadata.get("metrics", {})
    if "validation_top1" in metrics:
        images = metadata.get("data", {}).get("validation_size")
        on = f" on {images:,} validation photos it never trained on" if images else " on validation photos"
        accuracy = f"Its top-1 answer was right for **{metrics['validation_top1']:.1%}**{on}"
        if "validation_top5" in metrics:
            accuracy += f", and the right species was in its top 5 for {metrics['validation_top5']:.1%}"
        accuracy += "."
    else:
        accuracy = "No validation accuracy was recorded for this model."
    report = metadata.get("calibration", {}).get("report", {})
    if "kept_flowers" in report and "non_flowers" in report:
        limits = (
            "it only knows these species. When a photo looks like none of them the verdict says so, "
            f"but that check is rough: it let through {report['kept_flowers']:.0%} of the validation "
            f"flowers and turned away {report['non_flowers_rejected']} of {report['non_flowers']} test "
            "photos of other things. A flower it has never seen can still get the name of a look-alike."
        )
    else:
        limits = (
            "it only knows these species and always answers with one of them, so a flower it "
            "has never seen gets the name of a look-alike (the verdict says so when it is unsure)."
        )
    return f"""## About
**What it knows:** the {len(class_names)} flower species of the
[Oxford Flowers-102]({DATASET_URL}) data set (list below), learnt by fine-tuning
{metadata["backbone"]} at {metadata["image_size"]} px. {accuracy}

**Limits:** {limits} Photos of a single flower, filling the frame, work best. It is a demo,
**not a plant-safety tool**: never use it to decide whether a plant is edible, poisonous or safe
for pets.
"""


def build_demo() -> gr.Blocks:
    """The page; `classify` is its only event, so `/predict` is the only API endpoint."""
    with gr.Blocks(title="Flower classifier", analytics_enabled=False) as demo:
        gr.Markdown("# Which flower is this?\nThe model's five best guesses among 102 species.")
        with gr.Row(equal_height=True):
            image = FlowerPhoto(
                type="filepath",
                sources=["upload", "webcam", "clipboard"],
                label="Flower photo",
                height=360,
            )
            with gr.Column():
                chart = gr.Label(num_top_classes=TOP_K, label=f"Top {TOP_K} species")
                answer = gr.Markdown(PROMPT, label="Verdict")
                explain_box = gr.Checkbox(
                    value=False,
                    label="Explain (Grad-CAM)",
                    info="Colour the parts of the photo the top answer rests on (red: most).",
                    visible=CLASSIFIER.explains,  # a TF-Hub backbone returns no class activation maps
                )
                heatmap = gr.Image(
                    label="Grad-CAM of the top species",
                    type="pil",
                    interactive=False,
                    visible=False,
                    height=300,
                    elem_id="gradcam",
                )
        # `input` fires once per upload, webcam shot, paste or clear; `change` fires twice when
        # a photo replaces another (Gradio 6), and would classify it, or report its error, twice.
        image.input(
            classify,
            inputs=image,
            outputs=[chart, answer],
            api_name="predict",
            show_progress="minimal",
        )
        # `change` (unlike `input`) also fires when an example is loaded; the box starts it too.
        gr.on(
            triggers=[image.change, explain_box.change],
            fn=explain,
            inputs=[image, explain_box],
            outputs=heatmap,
            api_visibility="private",  # `/predict` stays the one endpoint
            concurrency_id="explain",
            concurrency_limit=EXPLAIN_CONCURRENCY,
            show_progress="minimal",
        )
        gr.Examples(
            examples=[str(p) for p in sorted(EXAMPLES_DIR.glob("*.jpg"))],
            inputs=image,
            outputs=[chart, answer],
            fn=classify,
            run_on_click=True,  # an example click sets the image without an `input` event
            cache_examples=False,  # else Spaces would run the examples at every start-up
            api_visibility="private",  # `/predict` stays the one endpoint
            label="Example photos (click one)",
            examples_per_page=12,
        )
        gr.Markdown(about(CLASSIFIER.metadata, CLASSIFIER.class_names))
        with gr.Accordion(f"The {len(CLASSIFIER.class_names)} species", open=False):
            gr.Markdown(", ".join(sorted(CLASSIFIER.class_names)))
    return demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT)


demo = build_demo()

if __name__ == "__main__":
    demo.launch()
