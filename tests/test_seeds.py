"""`posisp seeds`: the per-seed configs regenerate data and task model; the aggregate is mean ± std per row."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

from posisp_dist.experiments.results import aggregate
from posisp_dist.experiments.seeds import markdown, seed_config


def test_each_seed_regenerates_the_data_and_the_task_model():
    a, b = (seed_config(REPO / "configs" / "quick.yaml", s) for s in (0, 2))
    assert (a.seed, a.task.train.seed, b.seed, b.task.train.seed) == (0, 0, 2, 2)
    ppo = seed_config(REPO / "configs" / "quick.yaml", 1, {"policy.param_learning": "ppo"})
    assert ppo.policy.param_learning == "ppo" and ppo.seed == 1
    yolo = seed_config(REPO / "configs" / "quick-yolo.yaml", 2)
    assert (yolo.seed, yolo.task.kind, yolo.task.train.seed) == (2, "ultralytics", 2)


def test_a_task_model_from_user_weights_keeps_its_weights_over_seeds(tmp_path):
    """With the user's weights the seed changes the data; the weights stay."""
    cfg = tmp_path / "tv.yaml"
    cfg.write_text("task: {kind: torchvision, weights: model.pt}\n")
    one = seed_config(cfg, 3)
    assert one.seed == 3 and one.task.weights == "model.pt"


def test_aggregate_is_mean_and_population_std_over_the_seeds_that_have_the_row():
    rows = [
        {"method": "camera_isp", "seed": 0, "map": 12.0, "map50": 19.0},
        {"method": "sequence_ppo", "seed": 0, "map": 24.0, "map50": 38.0},
        {"method": "camera_isp", "seed": 1, "map": 14.0, "map50": 21.0},
        {"method": "sequence_ppo", "seed": 1, "map": 28.0, "map50": 42.0},
        {"method": "camera_isp", "seed": 2, "map": 13.0, "map50": 20.0},
    ]
    agg = {a["method"]: a for a in aggregate(rows, ["map", "map50"])}
    assert agg["camera_isp"]["map"] == pytest.approx(13.0)
    assert agg["camera_isp"]["map_std"] == pytest.approx(np.std([12.0, 14.0, 13.0]))
    assert agg["sequence_ppo"]["seeds"] == 2 and agg["sequence_ppo"]["map50"] == pytest.approx(40.0)
    metrics = [{"key": "map", "label": "mAP@.5:.95"}, {"key": "map50", "label": "mAP@.5"}]
    table = markdown({"aggregate": list(agg.values()), "rows": rows, "metrics": metrics})
    assert table.splitlines()[0] == "| method | mAP@.5:.95 | mAP@.5 | per seed (mAP@.5:.95) |"
    assert "| sequence_ppo | 26.0 ± 2.0 | 40.0 ± 2.0 | 24.0, 28.0 |" in table
    assert "| camera_isp | 13.0 ± 0.8 | 20.0 ± 0.8 | 12.0, 14.0, 13.0 |" in table
