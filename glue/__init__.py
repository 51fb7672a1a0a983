"""What ``tune/`` and ``serve/`` stand on, below the front door (``workflows/``): the one
trainer builder and Ray Train loop (:mod:`glue.train`), the one module that talks to
MLflow (:mod:`glue.tracking`), Ray start-up and the workers' environment
(:mod:`glue.runtime`), console output and logs (:mod:`glue.console`), errors and exit
statuses (:mod:`glue.errors`), and every private Ray/argparse name in one place
(:mod:`glue.private_api`). Imports :mod:`avarnet` and nothing above it."""
