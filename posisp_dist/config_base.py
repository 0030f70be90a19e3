"""The strict base every config section derives from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # allow_inf_nan=False: an inf or nan in any float field (env.cost_lambda=.inf, ppo.lr=nan) is refused here,
    # not found as nan gradients after minutes of training
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
