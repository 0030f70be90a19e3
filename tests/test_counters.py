"""The run's counters: one name each, from an EnvRunner's iteration results to the driver's state and MLflow."""

from __future__ import annotations

import json
from dataclasses import asdict

from posisp_dist.runs.counters import Counters
from posisp_dist.runs.storage import STATE_FILE, DriverState, read_state


def test_an_iteration_adds_each_counter_from_its_envrunner_key_and_skips_nan():
    from ray.rllib.utils.metrics import NUM_EPISODES

    state = DriverState(images=10, distinct_images=5, module_runs=5)
    state.add_iteration({NUM_EPISODES: 4, "isp/distinct_images": 1, "isp/module_runs": 7.0,
                         "isp/task_images": float("nan"), "isp/task_backward_images": "n/a"})
    assert state.counts() == {"images": 14, "distinct_images": 6, "module_runs": 12, "task_calls": 0,
                              "task_images": 0, "task_backward_images": 0}
    assert state.metrics()["charts/episodes_total"] == 14.0 and state.metrics()["isp/module_runs_total"] == 12.0
    assert set(state.metrics()) == {Counters.metric(n) for n in Counters.names()}


def test_a_checkpoint_of_an_older_driver_state_reads_with_the_counters_names(tmp_path):
    new = {"images", "distinct_images"}  # the old state had "episodes", and one image per episode
    old = {k: v for k, v in asdict(DriverState(iteration=2, task_images=64)).items() if k not in new}
    (tmp_path / STATE_FILE).write_text(json.dumps({**old, "episodes": 32}))
    state = read_state(tmp_path)
    assert (state.iteration, state.images, state.distinct_images, state.task_images) == (2, 32, 32, 64)
