"""ultralytics, imported the one way this project allows: offline, with private settings, threads kept.

ultralytics reads its switches from the environment when it is first imported: `YOLO_OFFLINE` skips the DNS
probe it otherwise runs at import, `YOLO_CONFIG_DIR` moves its settings file out of the user's home. Its
settings then turn every integration off (hub sync, MLflow, TensorBoard, Ray Tune, ...): an MLflow callback would
otherwise log ultralytics' own runs into this project's tracking store. Its dataset check downloads a plotting
font when none is in its settings folder; matplotlib's DejaVu Sans is put there instead. Importing it also calls
`cv2.setNumThreads(0)`; the caller's OpenCV thread count is put back.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

# Every integration ultralytics' settings know of, off (its hub sync and its callbacks into other trackers).
INTEGRATIONS_OFF = {
    "sync": False, "mlflow": False, "tensorboard": False, "wandb": False, "clearml": False, "comet": False,
    "dvc": False, "raytune": False, "vscode_msg": False, "openvino_msg": False,
}


def settings_dir() -> Path:
    """Where ultralytics keeps its settings in this process: a private folder, never the user's home."""
    return Path(tempfile.gettempdir()) / f"posisp-ultralytics-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def ultralytics() -> Any:
    """The `ultralytics` package, imported offline with private settings; ImportError naming the extra."""
    os.environ["YOLO_OFFLINE"] = "true"  # no DNS probe at import, no hub or update checks later
    os.environ.setdefault("YOLO_CONFIG_DIR", str(settings_dir()))
    os.environ.setdefault("YOLO_VERBOSE", "false")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # never pip-install a missing requirement at run time
    try:
        import cv2

        threads = cv2.getNumThreads()
        import ultralytics as lib
        from ultralytics.utils import SETTINGS
    except ImportError:
        raise ImportError(
            "task kinds 'ultralytics' and 'ultralytics_seg' need the ultralytics package: "
            'pip install -e ".[detectors]"'
        ) from None
    cv2.setNumThreads(threads)
    private = Path(os.environ["YOLO_CONFIG_DIR"])
    wanted = {**INTEGRATIONS_OFF, **{f"{d}_dir": str(private / d) for d in ("datasets", "weights", "runs")}}
    wanted = {k: v for k, v in wanted.items() if k in SETTINGS}  # the keys this ultralytics release knows
    if any(SETTINGS.get(k) != v for k, v in wanted.items()):
        SETTINGS.update(wanted)
    _plot_fonts()
    return lib


def _plot_fonts() -> None:
    """ultralytics' dataset check asks for its plotting font and downloads it when its settings folder lacks it:
    matplotlib's own DejaVu Sans stands in (a font file is all it checks for; plots are off in training here)."""
    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR

    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = Path(USER_CONFIG_DIR) / name
        if not target.exists():
            source = Path(font_manager.findfont("DejaVu Sans", fallback_to_default=True))
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(source.read_bytes())
            tmp.replace(target)  # atomic: EnvRunners may start at once
