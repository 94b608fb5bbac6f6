"""`python -m airgap_runtime` (or `python -m bundler.runtime`): start the scoring server."""

from __future__ import annotations

from .server import main

raise SystemExit(main())
