"""Wheels with .data/data: where their files landed, as a virtualenv would put them."""

import importlib.util
import os


def init():
    pass


def run(raw_data):
    lib = os.environ["AZUREML_EXTRA_PYTHON_LIB_PATH"]
    spec = importlib.util.find_spec("sklearnex")
    prefix = os.environ.get("AIRGAP_PREFIX", "")
    labext = os.path.join(prefix, "share", "jupyter", "labextensions", "@jupyter-widgets")
    origin = spec.origin if spec else None
    return {
        "sklearnex_in_site_packages": bool(origin and origin.startswith(lib + os.sep)),
        "sklearnex_origin": os.path.relpath(origin, lib) if origin else None,
        "labextension_in_prefix": os.path.isfile(
            os.path.join(labext, "jupyterlab-manager", "package.json")
        ),
    }
