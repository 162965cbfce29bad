"""The model repository, after TF Serving: source -> loader -> manager -> servable.

- ``source``: scans ``<base>/<name>/<version>/`` and labels, asks for versions by ``policy``;
- ``loader``: checks and opens one version directory (``load_servable``);
- ``manager``: loads what is aspired, swaps without a gap, drains and unloads the rest;
- ``servable``: one loaded version and its holders;
- ``publish``: ``python -m serving.repository.publish`` (``make deploy``) proves and publishes
  an artifact as the next version, atomically.
"""
