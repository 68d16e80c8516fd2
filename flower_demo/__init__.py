"""flower_demo: fine-tune an ImageNet CNN on flowers, and classify photos with it.

Where things live:
- images.py   decoding any user image into the model's input array (one path for everything)
- data.py     labelled image sources (Flowers-102 folder, tensorflow_datasets, class folders)
- models.py   backbone registry, the classifier, saving/loading with metadata and label maps
- train.py    two-stage training (python -m flower_demo.train)
- evaluate.py accuracy on a split (python -m flower_demo.evaluate)
- report.py   where a model fails: the evaluation report (evaluate --report) and predict's --plot figure
- predict.py  the prediction API and command line (python -m flower_demo.predict)
- explain.py  Grad-CAM heatmaps and their overlay on the photo (flower_demo.explain.gradcam)
- calibrate.py temperature scaling and the "not one of the classes" rule (python -m flower_demo.calibrate)
- export.py   TensorFlow Lite export for phones, and running the exported file (python -m flower_demo.export)
- bench.py    speed and memory figures (python -m flower_demo.bench)
"""

import os

# Keep TensorFlow's C++ start-up chatter out of the command lines' output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from flower_demo.errors import FlowerDemoError  # noqa: E402
from flower_demo.images import process_image  # noqa: E402

# The rest loads Keras, so it is imported on first use (this also keeps
# `python -m flower_demo.predict` from importing its own module twice).
_LAZY = {
    "Classifier": "flower_demo.predict",
    "Prediction": "flower_demo.predict",
    "predict": "flower_demo.predict",
    "predict_batch": "flower_demo.predict",
    "create_model": "flower_demo.models",
    "load_model": "flower_demo.models",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flower_demo' has no attribute {name!r}")


__all__ = ["FlowerDemoError", "process_image", *_LAZY]
