"""Hyperparameter transfer and prediction: muP, scaling rules, loss-curve prediction."""

from optarena.scaling.loss_curve import (
    AnnealingLawParams, annealing_areas, compare_curves, detect_warmup, fit_annealing_law, plot_predictions,
    predict_curve,
)
