"""Honest probabilities and "not one of the 102": temperature scaling and the rejection rule.

    python -m flower_demo.calibrate --model weights --data-dir DATA_DIR
    python -m flower_demo.calibrate --model weights --data-dir DATA_DIR --folds RUN_A RUN_B

Everything is fitted on photos a model never trained on. By default that is the model's own
validation split. A model trained on train + validation (the final one) has none left, so
`--folds` names runs of the same recipe that each held one split out (train on train, score on
validation; train on validation, score on train): each is scored on its held-out split and the
results are pooled (out-of-fold). Their accuracies are the recipe's estimate, stored under
"estimate" in metadata.json: a figure from photos no choice was made on, unless a fold's epoch
was chosen on them (the fold says so) or the recipe itself was picked on a fold's score
(`--recipe-chosen-on RUN` says which; the estimate then also gives the other folds' figure alone).

It fits a temperature T (softmax(log p / T) minimises the negative log-likelihood) and measures
the expected calibration error (ECE, 15 equal-width bins) before and after. Then it compares four
out-of-distribution scores, all read from the served model's forward pass (probabilities and
pooled features, the engine the core runs, LiteRT by default): max-softmax after T, energy
T * logsumexp(z / T) of the logits z = features @ kernel + bias, Mahalanobis distance to the
nearest class mean under a shared Ledoit-Wolf covariance, and cosine similarity to the k-th
nearest training photo (kNN on L2-normalised features). A model's statistics are fitted on the
photos it trained on; each threshold keeps KEEP_FLOWERS of the held-out flowers; k is chosen on
held-out flowers against the "choice" part of ood_photos/. The held-out part of ood_photos/ is
used for the final figures only.

The served rule is kNN (DEFAULT_RULE, `--rule` picks another): on this model it separates flowers
from the other photos far better than the rest (see README). It writes {"temperature", "ood_rule",
"ood_threshold", "ood_k", "ood_file", "report"} under "calibration" in metadata.json and the rule's
statistics to ood.npz beside the model (`--dry-run` only prints).

This package owns the fitting and its measures, in four parts: rules.py (the temperature, each
rule's statistics, the candidate rules, their comparison and the choice), folds.py (the folds,
their forward passes and the estimate), fit.py (`calibrate`: a calibration from start to end) and
cli.py (the command: its arguments, its report, `write_calibration`). What prediction applies at
run time (`Calibration`, `known_score`, `read_calibration`) is the serving core's (core.py); the
accuracy and calibration-error figures are metrics.py's. scipy, scikit-learn and Keras (to read
the classifier's kernel and bias from model.keras, for energy) are imported only when run.
"""

from flower_demo.calibrate.cli import main, write_calibration
from flower_demo.calibrate.fit import calibrate

__all__ = ["calibrate", "main", "write_calibration"]
