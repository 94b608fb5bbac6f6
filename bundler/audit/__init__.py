"""`airgap audit`: the bundle's SBOM against an offline OSV advisory snapshot."""
