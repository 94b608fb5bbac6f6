"""An SDK-style driver script: forwards to the real score script in ``driver_module``.

Its own run() drops the parameters of the real, @input_schema-decorated run(); Azure ML's
server calls the real one directly, and so does the runtime. init() is the driver's.
"""

import schema_headers as driver_module

INITIALIZED = []


def init():
    INITIALIZED.append("driver")
    driver_module.init()


def run(data):
    return {"driver": True}
