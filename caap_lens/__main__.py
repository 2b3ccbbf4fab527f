"""``python -m caap_lens``: the ``caap-lens`` command line (see `caap_lens.cli`)."""

import sys

from caap_lens.cli import main

if __name__ == "__main__":
    sys.exit(main())
