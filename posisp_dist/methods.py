"""The one table of learned methods: each row's name, and the config fields that make it that method.

`posisp compare` reads it forwards (a name -> the overrides to train it), eval rows, MLflow tags and
`posisp seeds` read it backwards (a config -> its name); both come from the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from posisp_dist.config import Config


@dataclass(frozen=True)
class Method:
    """A learned method: the formulation (sequence-level POS-ISP or step-wise AdaptiveISP-style), whether the
    policy sees the image, AdaptiveISP's compute profile, and how the module parameters are learned."""

    env_kind: Literal["sequence", "stepwise"] = "sequence"
    image_blind: bool = False
    all_modules_per_step: bool = False
    param_learning: Literal["pathwise", "ppo"] = "pathwise"

    @property
    def name(self) -> str:
        """sequence_ppo[_blind] | stepwise_ppo[_adaptiveisp], + `_ppo_params` when PPO learns the parameters."""
        if self.env_kind == "stepwise":
            base = "stepwise_ppo_adaptiveisp" if self.all_modules_per_step else "stepwise_ppo"
        else:
            base = "sequence_ppo_blind" if self.image_blind else "sequence_ppo"
        return base if self.param_learning == "pathwise" else f"{base}_ppo_params"

    def overrides(self) -> dict[str, dict[str, Any]]:
        """Config section -> fields that select this method."""
        env: dict[str, Any] = {"kind": self.env_kind}
        if self.env_kind == "stepwise":
            env["all_modules_per_step"] = self.all_modules_per_step
        return {"env": env, "policy": {"image_blind": self.image_blind, "param_learning": self.param_learning}}


def _table() -> dict[str, Method]:
    rows = []
    for learning in ("pathwise", "ppo"):
        rows += [
            Method("sequence", param_learning=learning),
            Method("sequence", image_blind=True, param_learning=learning),
            Method("stepwise", param_learning=learning),
            Method("stepwise", all_modules_per_step=True, param_learning=learning),
        ]
    return {m.name: m for m in rows}


METHODS: dict[str, Method] = _table()


def method_of(cfg: Config) -> Method:
    """The method a config trains (step-wise policies always see the image)."""
    stepwise = cfg.env.kind == "stepwise"
    return Method(
        env_kind=cfg.env.kind,
        image_blind=cfg.policy.image_blind and not stepwise,
        all_modules_per_step=cfg.env.all_modules_per_step and stepwise,
        param_learning=cfg.policy.param_learning,
    )


def method_name(cfg: Config) -> str:
    """The row name of a trained policy (see `Method.name`)."""
    return method_of(cfg).name
