"""The model layer: the bundled networks, their cards and the model input, one room.

Named ``modellayer`` (not ``models``) so it is not mistaken for the repository's top-level
``models/`` folder, which holds the bundled weights and cards as data (``modelstore.models_dir``).

Importing the package loads no TensorFlow: each model imports Keras when it loads.
"""
