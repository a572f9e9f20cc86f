"""``python -m studio_core.embedded.training``: train the embedded model (see ``train.py``), or, on a saved
folder, ``evaluate`` it (writes ``evaluation.json``) and regenerate its model ``card`` (README.md) from
``training_report.json`` and ``evaluation.json`` without retraining. ``features`` does the same for the emoji
feature network (``features.py``, ``feature_card.py``).

    python -m studio_core.embedded.training --recipe cpu --out DIR          # train
    python -m studio_core.embedded.training evaluate --model-dir DIR        # measure: speed, fidelity
    python -m studio_core.embedded.training card --model-dir DIR            # README.md from the two files
    python -m studio_core.embedded.training features --recipe cpu|gpu|tiny  # train the feature network
    python -m studio_core.embedded.training flux --recipe cpu|cpu-continue|gpu|tiny --out DIR  # emoji-flux
    python -m studio_core.embedded.training flux mag-ratios DIR             # MagCache's ratios into its folder
    python -m studio_core.embedded.training features evaluate --results F   # its evaluation.json, then its card
    python -m studio_core.embedded.training features card                   # its README.md from its two files
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def folder_main(argv: list[str]) -> None:
    """The ``evaluate`` and ``card`` commands on a saved pipeline folder."""
    from studio_core.embedded.training.model_card import card_from_folder

    p = argparse.ArgumentParser(prog="python -m studio_core.embedded.training", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["evaluate", "card"])
    p.add_argument("--model-dir", type=Path, default=Path("studio_core/embedded/emoji-sd"))
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="where the rendered data set is kept")
    p.add_argument("--guidance", type=float, nargs="+", default=None,
                   help="guidance scales to measure prompt fidelity at (default: 3.0)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10, help="timed repeats of the speed protocol")
    p.add_argument("--speed-only", action="store_true",
                   help="re-time only, keeping the fidelity figures of an evaluation.json of the same weights")
    a = p.parse_args(argv)
    if not (a.model_dir / "training_report.json").is_file():
        p.error(f"--model-dir {a.model_dir}: no training_report.json there (not a trained pipeline folder)")
    if a.command == "evaluate":
        from studio_core.embedded.training.evaluate import EXTRA_GUIDANCE, evaluate_model_dir

        evaluate_model_dir(a.model_dir, a.cache_dir, tuple(a.guidance or EXTRA_GUIDANCE), a.threads, a.repeats,
                           a.speed_only)
    print(card_from_folder(a.model_dir))


if sys.argv[1:2] == ["features"]:
    if sys.argv[2:3] in (["evaluate"], ["card"]):
        from studio_core.embedded.training.feature_card import main as feature_folder_main

        feature_folder_main(sys.argv[2:])
    else:
        from studio_core.embedded.training.features import main as train_features

        train_features(sys.argv[2:])
elif sys.argv[1:3] == ["flux", "mag-ratios"]:  # MagCache's ratios, measured on the folder and shipped in it
    from studio_core.embedded.training.model_card import card_from_folder
    from studio_core.knobs._mag_ratios import write_mag_ratios

    folder = sys.argv[3] if len(sys.argv) > 3 else "studio_core/embedded/emoji-flux"
    print(write_mag_ratios(folder, made_by=f"python -m studio_core.embedded.training flux mag-ratios {folder}"))
    print(card_from_folder(Path(folder)))
elif sys.argv[1:2] == ["flux"]:
    from studio_core.embedded.training.flux import main as train_flux

    train_flux(sys.argv[2:])
elif sys.argv[1:2] in (["evaluate"], ["card"]):
    folder_main(sys.argv[1:])
else:
    from studio_core.embedded.training.train import main

    main()
