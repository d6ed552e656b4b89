"""``tsattn-export``: not implemented yet (issue #7)."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from tsattn.cliutil import not_implemented


def main(argv: Optional[Sequence[str]] = None) -> int:
    return not_implemented("tsattn-export", "TorchScript/ONNX export with parity checks (issue #7)")


if __name__ == "__main__":
    sys.exit(main())
