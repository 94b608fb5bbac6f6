"""Child processes of the scoring server process the bundle's ``.pth`` files, as the server did.

The runtime copies this file to the top of ``runtime/``, which is on PYTHONPATH in the image
and the local runner, so every interpreter started from the scoring process imports it at
start-up. The server sets ``AIRGAP_SITE_DIRS`` (its package folders, which are also on the
child's PYTHONPATH) before it starts workers; for each of them ``site.addsitedir`` runs the
``.pth`` files, as a virtualenv's site-packages would at start-up. Without the variable (the
server process itself, or any unrelated interpreter) this does nothing. Python 3.8+.
"""

import os
import site


def _activate() -> None:
    for folder in os.environ.get("AIRGAP_SITE_DIRS", "").split(os.pathsep):
        if folder and os.path.isdir(folder):
            site.addsitedir(folder)


_activate()
