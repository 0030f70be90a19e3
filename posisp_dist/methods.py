"""The one table of learned methods: each row's name and the config fields that make a config that method.

`posisp compare` reads it forwards (a name -> the fields to set to train it); run names, MLflow tags, eval
rows and `posisp seeds` read it backwards (a config -> the row it matches). A new method is one more row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from posisp_dist.config import Config

Fields = dict[str, dict[str, Any]]  # config section -> field -> value


@dataclass(frozen=True)
class Method:
    """A learned method: its row name, what it trains (the config fields that select it) and a line saying so."""

    name: str
    trains: Fields
    doc: str

    def overrides(self) -> Fields:
        """Config section -> fields that select this method (a copy, for editing a raw config)."""
        return {section: dict(values) for section, values in self.trains.items()}

    def matches(self, cfg: Config) -> bool:
        return all(getattr(getattr(cfg, s), k) == v for s, fields in self.trains.items() for k, v in fields.items())

    @property
    def param_learning(self) -> str:
        return self.trains["policy"]["param_learning"]

    @property
    def size(self) -> int:
        return sum(len(fields) for fields in self.trains.values())


def _row(name: str, doc: str, env: dict[str, Any], policy: dict[str, Any], **more: dict[str, Any]) -> list[Method]:
    """The method with pathwise parameters, and its variant with PPO-learned parameters (`<name>_ppo_params`)."""
    return [
        Method(name, {"env": env, "policy": {**policy, "param_learning": "pathwise"}, **more}, doc),
        Method(f"{name}_ppo_params", {"env": env, "policy": {**policy, "param_learning": "ppo"}, **more},
               f"{doc}; PPO learns the parameters too"),
    ]


_SEQUENCE, _STEPWISE = {"kind": "sequence"}, {"kind": "stepwise", "all_modules_per_step": False}
_GAE = {"ppo": {"advantages": "gae"}}
_PATHWISE = {"image_blind": False, "param_learning": "pathwise"}
METHODS: dict[str, Method] = {m.name: m for m in [
    *_row("sequence_ppo", "POS-ISP: the whole pipeline from one forward pass, trained on its terminal reward",
          _SEQUENCE, {"image_blind": False}, **_GAE),
    *_row("sequence_ppo_blind", "POS-ISP's image-blind ablation: one pipeline distribution for every image",
          _SEQUENCE, {"image_blind": True}, **_GAE),
    *_row("stepwise_ppo", "AdaptiveISP-style: one module per step, a reward per step", _STEPWISE,
          {"image_blind": False}),
    *_row("stepwise_ppo_adaptiveisp", "step-wise with AdaptiveISP's compute: every module runs at every step",
          {**_STEPWISE, "all_modules_per_step": True}, {"image_blind": False}),
    Method("sequence_ppo_terminal", {"env": {**_SEQUENCE, "pipelines_per_image": 1}, "policy": _PATHWISE,
                                     "ppo": {"advantages": "terminal"}},
           "sequence_ppo with advantages = reward - V(s) on the real rows only (no bootstrap rows, no GAE)"),
    Method("sequence_ppo_loo4", {"env": {**_SEQUENCE, "pipelines_per_image": 4}, "policy": _PATHWISE,
                                 "ppo": {"advantages": "terminal"}},
           "sequence_ppo with 4 sampled pipelines per image, each scored against the mean of the other 3 (RLOO)"),
]}


def method_of(cfg: Config) -> Method:
    """The most specific row whose fields the config has."""
    found = [m for m in METHODS.values() if m.matches(cfg)]
    if not found:  # a combination no row names (a step-wise policy that is image-blind): named, not refused
        return Method(f"{cfg.env.kind}_custom", {}, "no row of the method table matches this config")
    return max(found, key=lambda m: m.size)


def method_name(cfg: Config) -> str:
    """The row name of a trained policy."""
    return method_of(cfg).name
