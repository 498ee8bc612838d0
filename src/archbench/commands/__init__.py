"""Sub-commands of the ``archbench`` CLI, one module each (see ``archbench.cli``)."""
