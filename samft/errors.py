"""The root of the errors a user can fix.

Every error caused by input the user controls (a config value, a data file, a checkpoint, a plugin
name, the tracking server, the state of a run) derives from :class:`UserError` as well as from the
built-in error it is (``ValueError``, ``RuntimeError``). Command-line entry points print such an
error as one line and exit 2 (:func:`samft.entry.run_cli`); knowing them by one base class lets
the entry point recognise them without importing the packages that define them (the engine takes
seconds to import, and a config rejected at load should be reported at once).

This module imports nothing from samft, so every package may use it.
"""


class UserError(Exception):
    """An error the user can fix; its message says what to do."""
