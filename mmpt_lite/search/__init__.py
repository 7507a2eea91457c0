"""Text search over a user's own video folder with a trained checkpoint.

``walk`` finds the videos, ``spans`` places overlapping windows on each, ``store`` is the on-disk index
(faiss vectors + a sidecar table + a JSON header, committed atomically as one generation), ``index``
builds and incrementally updates it with the checkpoint's video tower, ``query`` embeds a text with the
text tower and ranks windows, ``thumbs`` draws a hit's frames, ``html`` writes a self-contained results
page, ``server`` / ``webpage`` are the local web app and ``cli`` the ``mmpt-lite index|search|serve``
commands. Nothing else in the package imports this one.
"""
