"""The optimizer settings every trial uses besides its learning rates and weight decays.

Pure data, so `export` can state them without importing torch: the exported learning rates only
mean what they meant in the sweep when the user's run uses these same settings (Muon's update is
scaled by 0.2*sqrt(max(fan_in, fan_out)) through `adjust_lr_fn`; an lr tuned with that scaling is
wrong without it). telescope.train.optim builds torch's optimizers from exactly these values.

Weight decay is coupled in both optimizers, as torch implements them:
W <- W * (1 - lr_group * wd_group) every step, so the decay a user applies is lr * wd per step, not
wd alone. telescope.core.scaling keeps lr_group * wd_group fixed across widths.
"""

from __future__ import annotations

from types import MappingProxyType

ADAMW_BETAS = (0.95, 0.95)
ADAMW_EPS = 1e-8
MUON_SETTINGS = MappingProxyType(dict(
    momentum=0.95,
    nesterov=True,
    ns_steps=5,
    ns_coefficients=(3.4445, -4.775, 2.0315),
    eps=1e-7,
    # update scaled by 0.2*sqrt(max(fan_in, fan_out)) to match AdamW's RMS (Moonlight's rule)
    adjust_lr_fn="match_rms_adamw",
))
WEIGHT_DECAY_MODE = "coupled"  # W <- W * (1 - lr * wd), torch's Muon and AdamW alike
