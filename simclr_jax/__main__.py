"""`python -m simclr_jax <command> [flags]`: the same as the `simclr-jax` command."""

import sys

from simclr_jax.cli import main

if __name__ == "__main__":  # grain's worker processes are spawned and re-import this module
  sys.exit(main())
