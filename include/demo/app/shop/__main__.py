"""``python -m shop --host 127.0.0.1 --port 8000 --data-dir data``"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from shop.server import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="shop", description="The Conveyor demo shop.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.host, args.port, args.data_dir)


if __name__ == "__main__":
    main()
