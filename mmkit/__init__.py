"""mmkit: building blocks, models and recipes for vision-language pretraining.

The package is layered so that lower floors never import higher ones::

    layers -> encoders -> models -> (recipes)

``mmkit.layers`` is generic (knows nothing of FLAVA), ``mmkit.encoders`` builds
reusable image / text / fusion encoders from those layers, ``mmkit.models``
composes encoders into FLAVA, and ``mmkit.convert`` maps checkpoints of other
projects onto ours.
"""

__version__ = "0.1.0"
