"""Test helper script: does what the request asks, to probe the server's contract."""

import importlib
import json
import os
import sys
import time

STARTED = None


def init():
    global STARTED
    delay = float(os.environ.get("PROBE_INIT_DELAY", "0"))
    time.sleep(delay)
    marker = os.environ.get("PROBE_INIT_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
    STARTED = time.time()


def run(raw_data):
    request = json.loads(raw_data)
    action = request.get("action")
    if action == "sleep":
        time.sleep(request["seconds"])
        return {"slept": request["seconds"]}
    if action == "busy":
        end = time.time() + request["seconds"]
        while time.time() < end:
            pass
        return {"busy": request["seconds"]}
    if action == "exit":
        raise SystemExit(request.get("code", 3))
    if action == "interrupt":
        raise KeyboardInterrupt
    if action == "fail":
        raise ValueError(request.get("message", "probe failure"))
    if action == "import":
        try:
            module = importlib.import_module(request["module"])
        except ImportError as e:
            return {"importable": False, "error": str(e)}
        return {
            "importable": True,
            "file": getattr(module, "__file__", None),
            "value": getattr(module, "VALUE", None),
        }
    if action == "not_json":
        return {1, 2, 3}
    if action == "environment":
        return {
            "sys_path": sys.path,
            "executable": sys.executable,
            "prefix": sys.prefix,
            "env": {k: v for k, v in os.environ.items()},
            "pid": os.getpid(),
            "cwd": os.getcwd(),
        }
    if action == "modules":
        return {name: name in sys.modules for name in request["names"]}
    if action == "size":
        return {"size": len(raw_data)}
    return {"pid": os.getpid()}
