"""Names shared by the stages: the per-cell table and the output layout.

A cell table is a pandas DataFrame, one row per detected cell of one sample,
with coordinates in level-0 pixels of the file (``source``) the cell is in.
"""

from __future__ import annotations

# Columns produced by detection (segment + tiling), in output order.
DETECT_COLUMNS = ("source", "x", "y", "x0", "y0", "x1", "y1", "area_um2")
# Columns written to cells/<sample_id>.csv by `run`, in order. beyond_record:
# 1 when the cell lies beyond the model's record (classify/record_check.py),
# 0 when not, empty when the model has no record to check against.
CELL_CSV_COLUMNS = ("sample_id", "cell_id", *DETECT_COLUMNS, "class", "confidence", "beyond_record")
# Columns written to cells/<sample_id>.csv by `detect`.
DETECT_CSV_COLUMNS = ("sample_id", "cell_id", *DETECT_COLUMNS)
# The Matek et al. bone-marrow classes (for synthetic data and docs; a model
# carries its own label list and the engine uses the model's).
MATEK_CLASSES = (
    "ABE", "ART", "BAS", "BLA", "EBO", "EOS", "FGC", "HAC", "KSC", "LYI", "LYT",
    "MMZ", "MON", "MYB", "NGB", "NGS", "NIF", "OTH", "PEB", "PLM", "PMO",
)
