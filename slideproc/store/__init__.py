"""Output writers: the Zarr store (the record), CSV tables and GeoJSON (views of it).

``zarr_store`` holds every result; ``tables`` and ``geojson`` are rebuilt from
it, so a resumed run writes the same files as an uninterrupted one.
"""
