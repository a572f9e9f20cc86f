"""``python -m studio_core.embedded.training``: train the embedded model (see ``train.py``)."""

from studio_core.embedded.training.train import main

main()
