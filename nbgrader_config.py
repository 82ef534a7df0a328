"""nbgrader configuration for commands and the Formgrader started from the repository root.

`make lab` (and `make instructor`) start JupyterLab here; nbgrader and its Formgrader look for
nbgrader_config.py in the folder they start in. The course's configuration is
autograder/nbgrader_config.py: this file only loads it.
"""

load_subconfig("autograder/nbgrader_config.py")  # noqa: F821 (provided by traitlets)
