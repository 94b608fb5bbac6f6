"""A wheel whose .pth file must take effect, in the server and in its child processes."""

import os
import subprocess
import sys

PROBE = (
    "import distutils, os; "
    "print(os.path.relpath(distutils.__file__, os.environ['AZUREML_EXTRA_PYTHON_LIB_PATH']))"
)


def init():
    pass


def run(raw_data):
    import distutils

    lib = os.environ["AZUREML_EXTRA_PYTHON_LIB_PATH"]
    cmd = [sys.executable, "-c", PROBE]
    child = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return {
        "here": os.path.relpath(distutils.__file__, lib),
        "child": child.stdout.strip(),
        "child_err": child.stderr[-300:],
    }
