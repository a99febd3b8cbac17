"""Per-sample stain and illumination: how optical density becomes RGB.

Real slides differ in stain strength, hue and lamp brightness, so a detector
must not rely on one threshold. Each sample draws a 3x3 mixing of its optical
densities and a glass (white) colour; everything drawn in OD passes through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# OD is quantised to 1/1024 before the exponential: a lookup table is exact
# and repeatable (the same pixel always gets the same byte, whatever the tiling)
# and 0.25 grey level is below what 8 bits show.
_OD_STEPS = 1024
_OD_MAX = 8.0
_NOISE_PERIOD = 128  # px; a 32 um period at 0.25 um/px is invisible under 0.012 OD of noise


@dataclass(frozen=True)
class Stain:
    matrix: np.ndarray     # (3, 3) applied to OD vectors
    white: np.ndarray      # (3,) glass colour, 0-255
    noise: float = 0.012   # OD standard deviation of camera noise
    seed: int = 0

    @classmethod
    def random(cls, rng: np.random.Generator, jitter: float = 1.0) -> "Stain":
        """A stain within the spread seen between labs: +-20 % strength, small hue shifts, lamp 225-252."""
        strength = 1 + jitter * rng.uniform(-0.2, 0.2)
        diag = strength * (1 + jitter * rng.uniform(-0.07, 0.07, 3))
        mix = np.eye(3) + jitter * rng.normal(0, 0.035, (3, 3)) * (1 - np.eye(3))
        bright = 252 - jitter * rng.uniform(0, 22)
        white = np.clip(bright + jitter * rng.uniform(-4, 4, 3), 200, 255)
        return cls((np.diag(diag) @ mix).astype(np.float32), white.astype(np.float32),
                   seed=int(rng.integers(0, 2**31)))

    @classmethod
    def neutral(cls) -> "Stain":
        return cls(np.eye(3, dtype=np.float32), np.full(3, 245.0, np.float32), 0.0)

    # ------------------------------------------------------------------
    def _lut(self) -> np.ndarray:
        lut = getattr(self, "_lut_cache", None)
        if lut is None:
            od = (np.arange(int(_OD_MAX * _OD_STEPS)) + 0.5) / _OD_STEPS
            lut = np.rint(self.white[:, None] * np.exp(-od)[None, :]).clip(0, 255).astype(np.uint8)
            object.__setattr__(self, "_lut_cache", lut)
        return lut

    def _noise_tile(self) -> np.ndarray:
        tile = getattr(self, "_noise_cache", None)
        if tile is None:
            rng = np.random.default_rng([self.seed, 99])
            tile = (rng.normal(0, 1, (3, _NOISE_PERIOD, _NOISE_PERIOD)) * self.noise).astype(np.float32)
            object.__setattr__(self, "_noise_cache", tile)
        return tile

    def _noise_for(self, h: int, w: int, gx0: int, gy0: int) -> np.ndarray:
        """(3, h, w) noise for the level-grid region at (gx0, gy0): the periodic tile, shifted."""
        tile = self._noise_tile()
        P = _NOISE_PERIOD
        rolled = np.roll(tile, (-(gy0 % P), -(gx0 % P)), axis=(1, 2))
        return np.tile(rolled, (1, -(-h // P), -(-w // P)))[:, :h, :w]

    def to_rgb(self, od: np.ndarray, gx0: int, gy0: int) -> np.ndarray:
        """uint8 (h, w, 3) RGB of a planar (3, h, w) OD image whose pixel (0, 0) is level-grid pixel (gx0, gy0)."""
        _, h, w = od.shape
        m = self.matrix
        noise = self._noise_for(h, w, gx0, gy0) if self.noise else None
        lut = self._lut()
        out = np.empty((h, w, 3), np.uint8)
        top = _OD_MAX * _OD_STEPS - 1
        for c in range(3):
            p = od[0] * (m[c, 0] * _OD_STEPS)
            p += od[1] * (m[c, 1] * _OD_STEPS)
            p += od[2] * (m[c, 2] * _OD_STEPS)
            if noise is not None:
                p += noise[c] * _OD_STEPS
            np.clip(p, 0, top, out=p)
            out[..., c] = lut[c][p.astype(np.int32)]
        return out
