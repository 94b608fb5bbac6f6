"""The scoring runtime: an Azure-ML-compatible HTTP server for `init()`/`run()` entry scripts.

It depends on the standard library and gunicorn (and werkzeug, loaded only for @rawhttp
scripts: ``rawhttp.py`` and the ``_toplevel/azureml`` shim), and imports nothing outside this
package, so its files can be copied into a bundle as ``runtime/airgap_runtime/`` (``_toplevel/``
to ``runtime/``) and run there with ``python -m airgap_runtime`` (``runtime/`` and
``runtime/lib/`` on PYTHONPATH). It supports Python 3.8 and newer on the target side. See
docs/runtime.md for the contract.
"""

from __future__ import annotations

__all__ = ["RUNTIME_VERSION"]

RUNTIME_VERSION = "1"
