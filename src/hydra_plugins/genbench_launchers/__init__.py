"""genbench's Hydra launchers: hydra-submitit-launcher's, with genbench's checks before submitting.

Hydra accepts launcher classes only from the ``hydra_plugins`` namespace package, so they live here; Hydra imports
this package on every start, so it imports nothing heavy (the checks load when a sweep is launched).
"""
