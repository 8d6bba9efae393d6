"""dualmode's built-in backends, one module each; installed as ``dualmode.backends``.

Each module holds one full implementation of :class:`dualmode.Backend` and is registered under
the entry-point group ``dualmode.backends``, as a third-party backend would be.
"""
