"""``tsattn-inject``: not implemented yet (the injector engine and the CALF recipe land with issue #4)."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from tsattn.cliutil import not_implemented


def main(argv: Optional[Sequence[str]] = None) -> int:
    return not_implemented("tsattn-inject", "the injector engine and its recipes (issue #4)")


if __name__ == "__main__":
    sys.exit(main())
