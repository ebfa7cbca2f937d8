"""The model layer: the bundled networks, their cards and the model input, one room.

Named ``modellayer`` (not ``models``) so it is not mistaken for the repository's top-level
``models/`` folder, which holds the bundled weights and cards as data (``modelstore.models_dir``).

* shared base: ``preprocessing`` (image -> model input, also used by training),
  ``postprocess`` (lung-mask cleanup), ``cards`` (the model-card schema), ``modelstore``
  (finding, checking and loading the bundled models) and ``common`` (softmax, Mahalanobis
  distance, batched probability prediction, the loaded-model base class);
* one module per model: ``lung``, ``classifier``, ``gate``, ``opacity``. They import the
  shared base, never each other; whoever runs several models (``xrayviewer.inference``'s
  ``Analyzer``, training) hands one model's output to the next (e.g. lung masks to the
  classifier).

Importing the package loads no TensorFlow: each model imports Keras when it loads.
"""
