"""Start the Diffusion Efficiency Studio: ``python app.py [--model M] [--data-dir D] [--host H] [--port P]``."""

from __future__ import annotations

import argparse

from app.ui import build_demo
from studio_core.models import EMBEDDED_MODEL_NAME


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Diffusion Efficiency Studio")
    p.add_argument("--model", default=EMBEDDED_MODEL_NAME,
                   help="embedded model name, diffusers folder or cached repo id")
    p.add_argument("--data-dir", help="study folder with studio.db and images/ "
                                      "(default: $STUDIO_DATA_DIR or <project>/data)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=7860)
    args = p.parse_args(argv)
    demo = build_demo(args.model, args.data_dir)
    demo.launch(server_name=args.host, server_port=args.port, show_error=True)


if __name__ == "__main__":
    main()
