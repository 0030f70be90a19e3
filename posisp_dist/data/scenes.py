"""Built-in annotated scenes: shapes of known classes pasted on crops of real photographs.

Backgrounds are the photographs and textures that ship inside the scikit-image wheel (no download).
Each scene is clean sRGB in [0, 1] with tight boxes; `unprocess.py` turns it into a raw capture.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

# photographs and textures present in the scikit-image wheel itself (others are fetched by pooch)
BACKGROUND_FILES = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "coins.png",
    "camera.png",
    "moon.png",
    "horse.png",
)
SUPERSAMPLE = 4  # anti-aliasing factor for shape masks


@dataclass(frozen=True)
class Scene:
    """A clean sRGB image with its objects."""

    image: np.ndarray  # (H, W, 3) float32 sRGB in [0, 1]
    boxes: np.ndarray  # (N, 4) float32 x0, y0, x1, y1 in pixels
    labels: np.ndarray  # (N,) int64 class ids
    instances: np.ndarray  # (H, W) uint8: 0 background, k the k-th object (1-based), where it is visible


@lru_cache(maxsize=1)
def load_backgrounds() -> tuple[np.ndarray, ...]:
    """The scikit-image photographs as float32 RGB arrays in [0, 1]."""
    import skimage.data
    import skimage.io

    folder = Path(skimage.data.__file__).parent
    out = []
    for name in BACKGROUND_FILES:
        path = folder / name
        if not path.exists():
            continue
        img = np.asarray(skimage.io.imread(path), np.float32)
        img = img / (65535.0 if img.max() > 255 else 255.0)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(img[..., :3]))
    if not out:
        raise RuntimeError(f"no background photographs found in {folder}; is scikit-image installed correctly?")
    return tuple(out)


def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (v <= 0.8) & (v >= -1.0 + 2.0 * np.abs(u) * 0.9)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return ((np.abs(u) <= 0.28) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.28) & (np.abs(u) <= 0.95))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.45)


SHAPES = {"disc": _disc, "square": _square, "triangle": _triangle, "cross": _cross, "ring": _ring}


def shape_mask(shape: str, size: int, angle: float) -> np.ndarray:
    """Anti-aliased (size, size) coverage in [0, 1] of a rotated unit shape."""
    n = size * SUPERSAMPLE
    c = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    y, x = np.meshgrid(c, c, indexing="ij")
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * x + sa * y, -sa * x + ca * y
    m = SHAPES[shape](u, v).astype(np.float32)
    return m.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    photos = load_backgrounds()
    img = photos[rng.integers(len(photos))]
    side = int(rng.integers(size, max(size + 1, min(img.shape[:2]) + 1)))
    y0 = int(rng.integers(0, img.shape[0] - side + 1))
    x0 = int(rng.integers(0, img.shape[1] - side + 1))
    crop = img[y0 : y0 + side, x0 : x0 + side]
    idx = (np.arange(size) * side / size).astype(int)  # nearest-neighbour rescale to the scene size
    crop = crop[idx][:, idx]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop * rng.uniform(0.6, 1.1), np.float32)


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random saturated sRGB colour (HSV with s, v high enough to stand out)."""
    h, s, v = rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.45, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return (v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


def make_scene(
    rng: np.random.Generator,
    size: int,
    classes: tuple[str, ...],
    objects_per_image: tuple[int, int],
    object_size: tuple[int, int],
) -> Scene:
    """Compose one scene: a photo crop with 1..N shaded, coloured objects that overlap little."""
    img = _background(rng, size)
    n = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))
    boxes, labels, taken = [], [], np.zeros((size, size), bool)
    instances = np.zeros((size, size), np.uint8)  # later objects paint over earlier ones, as in the image
    for _ in range(n * 10):  # rejection sampling for low overlap
        if len(boxes) == n:
            break
        s = int(rng.integers(object_size[0], object_size[1] + 1))
        y0, x0 = (int(v) for v in rng.integers(0, size - s + 1, 2))
        if taken[y0 : y0 + s, x0 : x0 + s].mean() > 0.15:
            continue
        cls = int(rng.integers(len(classes)))
        mask = shape_mask(classes[cls], s, float(rng.uniform(0, 2 * np.pi)))
        shade = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0), s, dtype=np.float32)[:, None, None]
        patch = _colour(rng) * shade
        region = img[y0 : y0 + s, x0 : x0 + s]
        region[:] = region * (1 - mask[..., None]) + patch * mask[..., None]
        ys, xs = np.nonzero(mask > 0.5)
        if len(ys) == 0:
            continue
        boxes.append([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1])
        labels.append(cls)
        instances[y0 : y0 + s, x0 : x0 + s][mask > 0.5] = len(labels)
        taken[y0 : y0 + s, x0 : x0 + s] = True
    boxes_arr = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Scene(np.clip(img, 0, 1), boxes_arr, np.asarray(labels, np.int64), instances)
