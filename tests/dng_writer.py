"""Write minimal but valid DNG files with tifffile, so reader tests need no downloaded data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

CFA_CODES = {"R": 0, "G": 1, "B": 2}


def write_dng(path: Path, bayer: np.ndarray, black: int, white: int, cfa: str = "RGGB") -> Path:
    """A single-IFD CFA DNG 1.4 with black/white level, CFA pattern and an identity-ish colour matrix."""
    color_matrix = [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]  # XYZ -> camera
    extratags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50708, "s", 0, "posisp test camera", True),  # UniqueCameraModel
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, tuple(CFA_CODES[c] for c in cfa), True),  # CFAPattern
        (50714, "H", 1, (black,), True),  # BlackLevel
        (50717, "H", 1, (white,), True),  # WhiteLevel
        (50721, "2i", 9, tuple(v for pair in color_matrix for v in pair), True),  # ColorMatrix1
        (50778, "H", 1, (21,), True),  # CalibrationIlluminant1 = D65
        (50728, "2I", 3, (1, 2, 1, 1, 2, 3), True),  # AsShotNeutral (r=0.5, g=1, b=0.667)
    ]
    tifffile.imwrite(path, bayer.astype(np.uint16), photometric=32803, extratags=extratags, subfiletype=0)
    return path
