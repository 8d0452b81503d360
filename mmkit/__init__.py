"""mmkit: building blocks, models and recipes for vision-language pretraining.

The package is layered so that lower floors never import higher ones::

    layers -> encoders -> models -> (recipes)

``mmkit.layers`` is generic (knows nothing of FLAVA), ``mmkit.encoders`` builds
reusable image / text / fusion encoders from those layers, ``mmkit.models``
composes encoders into FLAVA, CLIP and SigLIP (each with its checkpoint layouts beside it),
and ``mmkit.utils.weights`` reads and strictly loads every checkpoint.

The imports between subpackages form a DAG (``tests/test_layering.py``), an arrow
meaning "imports"::

    encoders -> layers        heads -> layers        data -> masking
    tokenizers -> data        models -> encoders, layers, heads, losses, tokenizers
    (utils imports no other mmkit package)

The external facts the code relies on (paper, released configuration, reference
implementations) are collected, with their sources, in ``docs/FLAVA.md``.
"""

__version__ = "0.1.0"
