"""``python -m ppl_mixtures.cli ...`` (also under ``torchrun ... -m ppl_mixtures.cli``)."""

from ppl_mixtures.cli import main

raise SystemExit(main())
