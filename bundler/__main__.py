"""`python -m bundler`: the same as the `airgap` command."""

from .cli import main

raise SystemExit(main())
