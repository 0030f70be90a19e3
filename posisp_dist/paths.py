"""Where relative paths live: `POSISP_HOME` if set, else the current directory.

Configs name data, model caches, run folders and the default MLflow store with relative paths
(`.posisp/...`). Under `ray job submit --working-dir .` the job runs in a temporary copy of the project that
Ray deletes later, so anything resolved against the CWD there is lost: setting `POSISP_HOME` (e.g. through
`--runtime-env-json '{"env_vars": {"POSISP_HOME": "/abs/dir"}}'`) anchors those paths somewhere that outlives
the job, and lets every job reuse the same dataset and detector cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

HOME_ENV = "POSISP_HOME"
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a job's entrypoint


def home() -> Path:
    """The base of relative paths: `$POSISP_HOME` (user-expanded, absolute), else the CWD."""
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else Path.cwd()


def resolve(path: str | Path) -> Path:
    """An absolute path: `path` itself if absolute, else under `home()`."""
    p = Path(path).expanduser()
    return p.resolve() if p.is_absolute() else (home() / p).resolve()


def job_working_dir() -> str | None:
    """The runtime-env `working_dir` when this process is a Ray job's entrypoint, else None."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    wd = runtime_env.get("working_dir")
    return str(wd) if wd else None


def ephemeral_home_warning(relative: list[str]) -> str | None:
    """A warning when `relative` outputs would land inside a Ray job's temporary working_dir copy."""
    if not relative or os.environ.get(HOME_ENV, "").strip() or job_working_dir() is None:
        return None
    return (
        f"running as a Ray job in a temporary copy of the project ({Path.cwd()}), which Ray deletes later; "
        f"{', '.join(relative)} would be written there. Set {HOME_ENV} (ray job submit --runtime-env-json "
        f'\'{{"env_vars": {{"{HOME_ENV}": "/abs/dir"}}}}\' ...) or use absolute paths and --tracking-uri.'
    )
