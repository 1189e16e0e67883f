"""Drop-in replacements for other curvature tools' APIs, backed by :mod:`landscape.curvature`.

* :mod:`landscape.compat.pyhessian`: ``from landscape.compat.pyhessian import hessian``.
"""
