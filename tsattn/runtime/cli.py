"""``tsattn-serve``: not implemented yet (issue #8)."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from tsattn.cliutil import not_implemented


def main(argv: Optional[Sequence[str]] = None) -> int:
    return not_implemented("tsattn-serve", "the ONNX Runtime server (issue #8)")


if __name__ == "__main__":
    sys.exit(main())
