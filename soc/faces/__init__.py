"""The faces: what a person or a script touches. They read results and never reach into the hardware layer.

``cli`` (the ``soc`` command), ``report`` (report.json and the terminal summary from a ``Result``), ``compare``
(several configs side by side), ``paper`` (the paper's figures: calibration, then prediction), ``bench`` (the
speed benchmark), ``calibrate`` (margins and thresholds for a target), ``montecarlo`` (chip instances),
``plots`` (PNG figures) and ``docs`` (README's generated tables). ``soc.sweep`` and ``soc.timeline`` are faces
too, each a package of its own.
"""
