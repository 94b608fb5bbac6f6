"""Entry script whose run() starts child processes that need the bundle's packages.

Request: {"check": "subprocess" | "spawn" | "pth" | "launcher" | "pth_here"}
"""

import json
import multiprocessing
import os
import subprocess
import sys

PTH_PROBE = "import os, pth_extra; print(pth_extra.VALUE, os.environ.get('AIRGAP_PTH_RAN'))"


def init():
    pass


def _in_child(queue):
    import airgap_child_probe

    queue.put(airgap_child_probe.VALUE)


def run(raw_data):
    check = json.loads(raw_data)["check"]
    if check == "subprocess":
        out = subprocess.run(
            [sys.executable, "-c", "import airgap_child_probe; print(airgap_child_probe.VALUE)"],
            capture_output=True,
            text=True,
            check=False,
        )
        return {"code": out.returncode, "out": out.stdout.strip(), "err": out.stderr[-500:]}
    if check == "spawn":
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_in_child, args=(queue,))
        proc.start()
        value = queue.get(timeout=60)
        proc.join(60)
        return {"code": proc.exitcode, "out": value}
    if check == "pth":
        # A .pth file in the package folder added a folder and ran an import line.
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                PTH_PROBE,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return {"code": out.returncode, "out": out.stdout.strip(), "err": out.stderr[-500:]}
    if check == "pth_here":
        import pth_extra

        return {"out": f"{pth_extra.VALUE} {os.environ.get('AIRGAP_PTH_RAN')}"}
    if check == "launcher":
        out = subprocess.run(
            ["airgap-probe-tool", "a", "b"], capture_output=True, text=True, check=False
        )
        return {"code": out.returncode, "out": out.stdout.strip(), "err": out.stderr[-500:]}
    raise ValueError(check)
