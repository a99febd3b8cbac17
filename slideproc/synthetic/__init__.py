"""Synthetic bone-marrow smears with exact ground truth (``slideproc synth``).

Modules, one job each: ``cells`` (palette, CellModel drawing), ``recipes``
(one procedural cell recipe per class), ``shapes`` (distance fields), ``background``
(glass, smear, red cells, platelets), ``stain`` (per-sample colour), ``scene``
(a deterministic description; ``Scene.render`` draws any region at any level),
``composition`` (class mix per sample type), ``samples`` (scene builders),
``tiff_writer`` (pyramidal TIFF), ``from_real`` (cells cut from real crops),
``archive`` (files and truth.csv).
"""

from .archive import write_archive
from .scene import PlacedCell, Scene

__all__ = ["write_archive", "Scene", "PlacedCell"]
