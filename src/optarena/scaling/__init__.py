"""Hyperparameter transfer and prediction: muP, scaling rules, loss-curve prediction."""

from optarena.scaling.loss_curve import (
    AnnealingLawParams, annealing_areas, compare_curves, detect_warmup, fit_annealing_law, plot_predictions,
    predict_curve,
)
from optarena.scaling.mup import (
    MupPlan, apply_mup, coord_check, create_mup_optimizer, mup_lm_config, mup_lm_init_, mup_param_groups, mup_plan,
    plot_coord_check,
)
from optarena.scaling.rules import (
    fit_hyperparameter_scaling, power_scheduler_lr, step_law_batch_size, step_law_lr, suggest, weight_decay_for_width,
)
