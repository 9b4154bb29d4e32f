"""Hyperparameter transfer and prediction: muP, scaling rules, loss-curve prediction."""

from optarena.scaling.coord_check import coord_check, plot_coord_check
from optarena.scaling.loss_curve import (
    AnnealingLawParams, annealing_areas, compare_curves, detect_warmup, fit_annealing_law, plot_predictions,
    predict_curve,
)
from optarena.scaling.mup import apply_mup, create_mup_optimizer, mup_param_groups
from optarena.scaling.mup_plan import MupPlan, mup_plan
from optarena.scaling.rules import (
    fit_hyperparameter_scaling, power_scheduler_lr, step_law_batch_size, step_law_lr, suggest, weight_decay_for_width,
)

__all__ = [
    "AnnealingLawParams", "MupPlan", "annealing_areas", "apply_mup", "compare_curves", "coord_check",
    "create_mup_optimizer", "detect_warmup", "fit_annealing_law", "fit_hyperparameter_scaling", "mup_param_groups",
    "mup_plan", "plot_coord_check", "plot_predictions", "power_scheduler_lr", "predict_curve", "step_law_batch_size",
    "step_law_lr", "suggest", "weight_decay_for_width",
]
