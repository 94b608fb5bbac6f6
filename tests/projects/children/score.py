"""Child processes that need the bundle's packages: joblib's default loky backend starts
fresh worker interpreters, and a plain subprocess imports a bundled package."""

import json
import os
import subprocess
import sys

from joblib import Parallel, delayed

power = None


def init():
    global power
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.json")) as f:
        power = json.load(f)["power"]


def _pow(x, p):
    return x**p


def _worker_pid(_):
    return os.getpid()


def run(raw_data):
    values = json.loads(raw_data)["data"]
    # loky (joblib's default backend): two worker processes, started with sys.executable.
    results = Parallel(n_jobs=2, backend="loky")(delayed(_pow)(v, power) for v in values)
    pids = set(Parallel(n_jobs=2, backend="loky")(delayed(_worker_pid)(i) for i in range(4)))
    child = subprocess.run(
        [sys.executable, "-c", "import joblib, sys; print(joblib.__version__, joblib.__file__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "results": results,
        "workers_are_other_processes": os.getpid() not in pids,
        "subprocess": {
            "code": child.returncode,
            "out": child.stdout.strip(),
            "err": child.stderr[-300:],
        },
        "lib_path": os.environ.get("AZUREML_EXTRA_PYTHON_LIB_PATH", ""),
    }
