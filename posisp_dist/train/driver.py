"""The training driver: config -> RLlib PPO on Ray, tracked in MLflow, checkpointed and resumable.

Exactly-once accounting: after every iteration the driver writes a local checkpoint whose
`driver_state.json` holds the iteration number, lifetime counters *and that iteration's metrics*, and only
then logs the metrics. A resumed run restores the checkpoint and re-logs the stored metrics if MLflow
lacks them, so no iteration is lost or counted twice. Every `checkpoint_every` iterations (and at the
end) the checkpoint is also uploaded to the MLflow run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from posisp_dist.config import Config, flatten
from posisp_dist.methods import method_name
from posisp_dist.runs.counters import iteration_count
from posisp_dist.runs.lease import run_lease
from posisp_dist.runs.provenance import check_data, check_task, provenance_tags
from posisp_dist.runs.storage import (
    BEST_CKPT_TAG,
    Checkpoints,
    DriverState,
    download_text,
    find_resume_checkpoint,
    open_tracker,
    read_state,
    resolve_paths,
    restore_best,
    selection_key,
    upload_checkpoint,
)
from posisp_dist.runs.tracking import Tracker, run_tags


def iteration_metrics(result: dict[str, Any], state: DriverState) -> dict[str, float]:
    """RLlib's result dict -> the run's metrics under charts/, losses/ and isp/."""
    from ray.rllib.algorithms.ppo.ppo import LEARNER_RESULTS_KL_KEY, LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS,
        ENV_RUNNER_SAMPLING_TIMER,
        EPISODE_RETURN_MAX,
        EPISODE_RETURN_MEAN,
        LEARNER_RESULTS,
        LEARNER_UPDATE_TIMER,
        NUM_ENV_STEPS_SAMPLED,
        TIMERS,
    )
    from ray.tune.result import TIME_THIS_ITER_S

    from posisp_dist.train.pathwise import GRAD_NORM_KEY, PARAM_MEAN_KEY

    runners, learner = result.get(ENV_RUNNER_RESULTS, {}), result.get(LEARNER_RESULTS, {}).get(DEFAULT_MODULE_ID, {})
    timers = result.get(TIMERS, {})
    steps = float(runners.get(NUM_ENV_STEPS_SAMPLED, 0) or 0)
    dt = float(result.get(TIME_THIS_ITER_S, 0) or 0)
    out = {
        "charts/episode_reward_mean": runners.get(EPISODE_RETURN_MEAN),
        "charts/episode_reward_max": runners.get(EPISODE_RETURN_MAX),
        "charts/env_steps_per_s": steps / dt if dt > 0 else None,
        "charts/iteration_seconds": dt,
        "charts/iteration": state.iteration,
        "losses/policy_loss": learner.get(POLICY_LOSS_KEY),
        "losses/vf_loss": learner.get(VF_LOSS_KEY),
        "losses/entropy": learner.get(ENTROPY_KEY),
        "losses/kl": learner.get(LEARNER_RESULTS_KL_KEY),
        "losses/vf_explained_var": learner.get(LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY),
        "losses/pathwise_grad_norm": learner.get(GRAD_NORM_KEY),
        "losses/pathwise_param_mean": learner.get(PARAM_MEAN_KEY),
        "time/sample_s": timers.get(ENV_RUNNER_SAMPLING_TIMER),  # RLlib's timers (EMA-smoothed)
        "time/learner_s": timers.get(LEARNER_UPDATE_TIMER),
        "charts/env_runner_restarts": state.env_runner_restarts,  # lifetime, across resumes (RLlib's is per process)
    }
    out.update(state.metrics())  # the lifetime counters
    out.update({k: v for k, v in runners.items() if k.startswith(("isp/", "time/"))})
    return {k: float(v) for k, v in out.items() if isinstance(v, int | float)}


def _ray_init(cfg: Config) -> bool:
    """Join `train.ray_address` (or RAY_ADDRESS, as under `ray job submit`) or start a local Ray (loopback only,
    `train/ray_local.py`); True if started."""
    from posisp_dist.train.ray_local import init_ray

    return init_ray(cfg.train.ray_address)


def _prepare(cfg: Config, tracker: Tracker, resumed: bool, progress: bool) -> None:
    """Build (or reuse) the dataset and the frozen task model once, before any EnvRunner needs them, and record
    their fingerprints with the run (a resumed run must find the same ones)."""
    from posisp_dist.cache import open_cache
    from posisp_dist.data.build import build_dataset
    from posisp_dist.data.shards import SPLITS, RawDataset
    from posisp_dist.tasks import load_task_model

    tags = tracker.get_run().data.tags if resumed else {}
    build_dataset(cfg.data, cfg.seed, progress=progress)
    for split in SPLITS:  # a corrupt shard is named here, in one line, before any EnvRunner meets it
        RawDataset(cfg.data.root, split).check()
    task = load_task_model(cfg.task, cfg.data.root, progress=progress, device="cpu")
    if resumed:
        check_task(str(tracker.run_id), tags, task)
    tracker.set_tags(provenance_tags(cfg, task))
    open_cache(cfg.cache)  # an unreachable cache.redis_url warns here, on the driver, before any EnvRunner starts


def train(
    cfg: Config | None = None,
    *,
    resume_run_id: str | None = None,
    tracking_uri: str | None = None,
    iterations: int | None = None,
    progress: bool = True,
    parent_run_id: str | None = None,
    on_iteration: Callable[[Any, DriverState], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a PPO policy; returns a summary with the MLflow run id (nested under a parent if given).

    `on_iteration(algo, state)` runs after each iteration is checkpointed and logged (custom stopping, fault
    injection in tests)."""
    from tqdm.auto import tqdm

    from posisp_dist.runs.signals import as_interrupted, signals_end_the_run
    from posisp_dist.trained.report import final_report

    if cfg is None and resume_run_id is None:
        raise ValueError("train needs a config, or a run id to resume")
    tracker = open_tracker(cfg or Config(), tracking_uri, existing_run=resume_run_id)
    lease = ExitStack()
    if resume_run_id:
        stored = tracker.get_run(resume_run_id)  # raises TrackingError naming an unknown run
        cfg = Config.model_validate(json.loads(download_text(tracker, resume_run_id, "config.json")))
        # one driver at a time: a second one is refused here, before it touches the run
        lease.enter_context(run_lease(Path(cfg.train.out_dir) / stored.info.run_id, stored.info.run_id))
        check_data(cfg, stored.info.run_id, stored.data.tags)  # nor on data it never saw (refused untouched)
        tracker.start(resume_run_id=stored.info.run_id)
    else:
        cfg = resolve_paths(cfg)
        nested = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
        tracker.start(run_name=f"{method_name(cfg)}-seed{cfg.seed}", tags=nested)
    total = iterations or cfg.train.iterations
    started_ray = False
    with lease, signals_end_the_run() as reinstall_signal_handlers, tracker:  # SIGTERM/SIGINT: the run ends KILLED
        if not resume_run_id:
            lease.enter_context(run_lease(Path(cfg.train.out_dir) / str(tracker.run_id), str(tracker.run_id)))
            tracker.log_params(flatten(cfg))
            tracker.log_dict(cfg.model_dump(mode="json"), "config.json")
        tracker.set_tags({**run_tags(cfg.isp.backend, _device(cfg)), "posisp.method": method_name(cfg)})
        _prepare(cfg, tracker, bool(resume_run_id), progress)
        started_ray = _ray_init(cfg)
        reinstall_signal_handlers()  # ray.init replaced our SIGTERM handler with its sys.exit
        try:
            summary = _train_loop(cfg, tracker, total, progress, tqdm, on_iteration)
            summary.update(final_report(cfg, tracker, summary["checkpoint"]))
            tracker.log_dict(summary, "summary.json")
        except KeyboardInterrupt as e:  # the tracker records which signal ended the run
            raise as_interrupted(e) from e
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    return summary


def _device(cfg: Config) -> str:
    gpus = cfg.train.num_gpus_per_env_runner + cfg.train.num_gpus_per_learner
    return "cuda" if gpus > 0 else "cpu"


def _train_loop(
    cfg: Config, tracker: Tracker, total: int, progress: bool, tqdm: Any, on_iteration: Any = None
) -> dict[str, Any]:
    """Iterate until `total` iterations or the budget: train, account and checkpoint, select on val, upload."""
    from posisp_dist.train.algo_config import build_algo_config
    from posisp_dist.train.endings import EnvRunnerDataErrors

    local = Checkpoints(Path(cfg.train.out_dir) / str(tracker.run_id) / "checkpoints", cfg.train.keep_checkpoints)
    # a corrupt shard in a remote EnvRunner fails the run, naming the file (`train/endings.py`)
    data_errors = EnvRunnerDataErrors(remote_env_runners=cfg.train.num_env_runners > 0)
    algo = build_algo_config(cfg, _shipment(cfg), data_errors.mailbox).build_algo()
    try:
        state = _restore(algo, tracker, local)
        bar = _progress_bar(tqdm, cfg, total, state, progress)
        first, uploaded, val_core = state.iteration + 1, None, None
        while state.iteration < total:
            t0 = time.perf_counter()
            result = data_errors.train(algo)  # raises before this iteration, trained on part of the data, is kept
            seconds = time.perf_counter() - t0
            ckpt = _account(algo, tracker, local, state, result, seconds, log_runners=state.iteration + 1 == first)
            spent = _budget_spent(cfg, state)
            last = state.iteration == total or spent  # a budget's last iteration is scored on val too
            if cfg.train.val_every and (state.iteration % cfg.train.val_every == 0 or last):
                val_core = _select_on_val(cfg, tracker, local, ckpt, state, val_core)
            if state.iteration % cfg.train.checkpoint_every == 0 or last:
                uploaded = upload_checkpoint(tracker, ckpt)
            bar.update(_bar_position(cfg, state) - bar.n)
            bar.set_postfix(reward=f"{state.last_metrics.get('charts/episode_reward_mean', float('nan')):.3f}")
            if on_iteration is not None:
                on_iteration(algo, state)
            if spent:
                break
        bar.close()
        ckpt = _final_checkpoint(tracker, local, state, uploaded)
    finally:
        algo.stop()
        data_errors.close()
    return {
        "run_id": str(tracker.run_id),
        "tracking_uri": tracker.uri,
        "checkpoint": str(ckpt),
        "iterations": state.iteration,
        "env_steps": state.env_steps,
        **state.counts(),
        "train_seconds": round(state.train_seconds, 2),
        "final_reward_mean": state.last_metrics.get("charts/episode_reward_mean"),
        "best_val_iteration": state.best_iteration or None,
    }


def _shipment(cfg: Config) -> Any:
    """With `data.transport: object_store`, the shards and weights shipped to EnvRunners that read no disk."""
    if cfg.data.transport != "object_store":
        return None
    from posisp_dist.data.transport import ship

    return ship(cfg)


def _restore(algo: Any, tracker: Tracker, local: Checkpoints) -> DriverState:
    """Resume from the run's newest checkpoint (re-logging the metrics of an iteration that was checkpointed but
    never logged), or start a fresh state."""
    ckpt = find_resume_checkpoint(tracker, local)
    if ckpt is None:
        return DriverState()
    algo.restore_from_path(str(ckpt))
    state = read_state(ckpt)
    logged = {int(v) for _, v in tracker.history("charts/iteration")}
    if state.iteration and state.iteration not in logged:  # killed between checkpoint and log
        tracker.log_metrics(state.last_metrics, step=state.env_steps)
    state.events.append({"event": "resumed", "iteration": state.iteration, "time": time.time()})
    _log_events(tracker, state)
    return state


def _account(
    algo: Any, tracker: Tracker, local: Checkpoints, state: DriverState, result: dict[str, Any], seconds: float,
    log_runners: bool,
) -> Path:
    """Count the iteration into `state`, checkpoint it (state and metrics inside), then log its metrics: a run
    killed in between re-logs them on resume, so no iteration is lost or counted twice."""
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED

    from posisp_dist.train.runners import restart_events

    runners = result.get(ENV_RUNNER_RESULTS, {})
    state.iteration += 1
    state.env_steps += iteration_count(runners, NUM_ENV_STEPS_SAMPLED)
    state.add_iteration(runners)
    state.train_seconds += seconds
    restarts = restart_events(runners, state.iteration, state.env_steps)
    state.env_runner_restarts += len(restarts)
    state.events += restarts
    state.last_metrics = iteration_metrics(result, state)
    ckpt = local.save(algo, state)
    tracker.log_metrics(state.last_metrics, step=state.env_steps)
    if restarts or log_runners:
        _log_events(tracker, state, algo)
    return ckpt


def _final_checkpoint(tracker: Tracker, local: Checkpoints, state: DriverState, uploaded: str | None) -> Path | None:
    """Upload the newest checkpoint if not yet, and keep the best on val as the run's checkpoint (restored from
    MLflow if the local copies were lost); -> the checkpoint the run ends with."""
    ckpt = local.latest()
    if ckpt is not None and uploaded != ckpt.name:
        upload_checkpoint(tracker, ckpt)
    if state.best_iteration:  # kept here, or uploaded before local checkpoints were lost: the one it names
        restore_best(tracker, local, str(tracker.run_id), tracker.get_run().data.tags.get(BEST_CKPT_TAG))
    if local.best() is not None:
        tracker.log_artifact(local.best(), "checkpoints/best")
        tracker.set_tags({BEST_CKPT_TAG: "checkpoints/best"})
        ckpt = local.best()
    return ckpt


def _select_on_val(
    cfg: Config, tracker: Tracker, local: Checkpoints, ckpt: Path, state: DriverState, core: Any
) -> Any:
    """Score the greedy policy of `ckpt` on the val split; keep it as `best/` when its mAP is the best so far.
    Returns the val split's core, kept by the caller for the next call."""
    from envs.factory import CoreSource
    from posisp_dist.trained.inference import greedy_on_split

    t0 = time.perf_counter()
    core = core if core is not None else CoreSource(cfg, "val").get()
    primary = core.task.metrics[0]  # the task's own headline metric, with its direction
    value = float(greedy_on_split(cfg, ckpt, "val", core)[primary.key])
    val_s = time.perf_counter() - t0
    tracker.log_metrics({selection_key(cfg): value, "time/val_s": val_s}, step=state.env_steps)
    if primary.better(value, state.best_val):
        state.best_val, state.best_iteration = value, state.iteration
        local.write_state(ckpt, state)  # a resumed run knows the best so far
        local.keep_best(ckpt)
    return core


def _progress_bar(tqdm: Any, cfg: Config, total: int, state: DriverState, progress: bool) -> Any:
    """Iterations, or the budget's own unit (training seconds, images) when a budget ends the run."""
    t = cfg.train
    if t.time_budget_s:
        total, unit = int(t.time_budget_s), "s"
    elif t.image_budget:
        total, unit = t.image_budget, "img"
    else:
        unit = "it"
    bar = tqdm(total=total, desc=method_name(cfg), disable=not progress, unit=unit)
    bar.update(_bar_position(cfg, state))
    return bar


def _bar_position(cfg: Config, state: DriverState) -> int:
    t = cfg.train
    if t.time_budget_s:
        return min(int(state.train_seconds), int(t.time_budget_s))
    if t.image_budget:
        return min(state.distinct_images, t.image_budget)
    return state.iteration


def _budget_spent(cfg: Config, state: DriverState) -> bool:
    """Wall-clock (`train.time_budget_s`) or training-image (`train.image_budget`) budget reached."""
    t = cfg.train
    return bool(
        (t.time_budget_s and state.train_seconds >= t.time_budget_s)
        or (t.image_budget and state.distinct_images >= t.image_budget)
    )


def _log_events(tracker: Tracker, state: DriverState, algo: Any = None) -> None:
    """`events.jsonl` (EnvRunner restarts, resumes) and a restart-count tag; with `algo`, also where each
    EnvRunner runs and what it reads (`env_runners.json`)."""
    tracker.log_text("".join(json.dumps(e) + "\n" for e in state.events), "events.jsonl")
    tracker.set_tags({"posisp.env_runner_restarts": str(state.env_runner_restarts)})
    if algo is not None and algo.env_runner_group is not None and algo.config.num_env_runners > 0:
        from posisp_dist.train.runners import describe_env_runners

        placement = describe_env_runners(algo)
        tracker.log_dict(placement, "env_runners.json")
        tracker.set_tags({"posisp.env_runner_nodes": str(len({r["node_id"] for r in placement}))})
