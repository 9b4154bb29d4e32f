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
