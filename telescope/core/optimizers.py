"""The optimizer settings every trial uses besides its learning rates and weight decays.

Pure data (and the two functions that lay it out for `export`), so export can state them without
importing torch: the exported learning rates only mean what they meant in the sweep when the user's
run uses these same settings (Muon's update is scaled by 0.2*sqrt(max(fan_in, fan_out)) through
`adjust_lr_fn`; an lr tuned with that scaling is wrong without it). telescope.train.muon_mup builds
torch's optimizers from exactly these values.

Weight decay is coupled in both optimizers, as torch implements them:
W <- W * (1 - lr_group * wd_group) every step, so the decay a user applies is lr * wd per step, not
wd alone. telescope.core.scaling keeps lr_group * wd_group fixed across widths.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from telescope.core.scaling import GROUPS

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
# AdamW runs torch's fused kernel (one kernel over all tensors); the same update as the default loop
ADAMW_FUSED = True
DECAY_NOTE = (
    "coupled weight decay: every step W <- W * (1 - lr * wd), lr the group's scheduled lr, as torch's "
    "AdamW and Muon do; with decoupled decay (W <- W * (1 - wd * schedule factor)) use each group's "
    "peak lr * wd as its wd"
)
MUON_LR_NOTE = (
    "; Muon's adjust_lr_fn match_rms_adamw scales each update by 0.2*sqrt(max(fan_in, fan_out)), and "
    "the exported Muon lr is only valid with that scaling"
)


def optimizer_of_group(optimizer: str) -> dict[str, str]:
    """Which torch optimizer takes each parameter group: Muon the hidden matrices (AdamW all of
    them with optimizer "adamw"), AdamW the rest."""
    return {g: "muon" if g == "hidden" and optimizer == "muon" else "adamw" for g in GROUPS}


def optimizer_settings(optimizer: str, ns_dtype: str = "bf16") -> dict[str, Any]:
    """Every optimizer setting a trial uses besides its per-group lr and weight decay, by optimizer,
    as plain JSON values (lists, not tuples), with the groups each optimizer takes. `ns_dtype` is
    the Newton-Schulz arithmetic the sweep's trials used (TrialConfig.resolved_ns_dtype)."""
    groups = optimizer_of_group(optimizer)
    settings: dict[str, Any] = {}
    if optimizer == "muon":
        muon = dict(MUON_SETTINGS)
        muon["ns_coefficients"] = list(muon["ns_coefficients"])
        settings["muon"] = {"groups": [g for g, o in groups.items() if o == "muon"], **muon,
                            "ns_dtype": ns_dtype, "weight_decay": WEIGHT_DECAY_MODE}
    settings["adamw"] = {"groups": [g for g, o in groups.items() if o == "adamw"], "betas": list(ADAMW_BETAS),
                         "eps": ADAMW_EPS, "weight_decay": WEIGHT_DECAY_MODE, "fused": ADAMW_FUSED}
    settings["note"] = DECAY_NOTE + (MUON_LR_NOTE if optimizer == "muon" else "")
    return settings
