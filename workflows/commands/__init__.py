"""The verbs of the ``avarnet`` command line, one module each: a module's ``add(sub)``
registers its sub-parser (arguments, help, and the function that runs it). Adding a verb
is adding a module here and one line to ``workflows.cli.VERBS``."""
