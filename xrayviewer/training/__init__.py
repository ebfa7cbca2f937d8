"""Training, evaluation and export of the bundled models.

Never imported by the app: it pulls in TensorFlow training machinery and dataset code.
The app side only reads what ``export`` writes to ``models/<name>/``. Run
``python -m xrayviewer.training --help``.
"""
